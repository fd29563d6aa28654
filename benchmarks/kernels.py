"""Kernel table on this GPU: dense cuBLAS vs cuSPARSELt vs sfcompile (2:4, block-16) per layer shape and M.

    python benchmarks/kernels.py [--ms 1,2,4,8,16,2048,4096] [--patterns 2:4,block16] [--moe] [--out t.md]

Same as ``sfcompile bench --kernels``; results are recorded in benchmarks/README.md.
"""

import argparse
import sys

from sfcompile.lowering import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_arguments(parser)
    args = parser.parse_args()
    args.kernels = True
    sys.exit(cli.run(args))
