"""Distributed engines behind `sfcompile.train.distributed.wrap_model`: FSDP2 and DeepSpeed ZeRO-3."""
