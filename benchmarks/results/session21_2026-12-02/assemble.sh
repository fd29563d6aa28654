# sourced by b.sh and next_ab.sh (from the repo root, carry .carry/train/b, after a.sh cached part 0): the model
# assembled, the training text unpacked and a copy of the code under $C/repo (the runs outlive the call's tree);
# leaves the shell in $C/repo with C set.
C=/root/cache
test -f $C/smol.part0 || { echo "no smol.part0: the machine went cold after call A"; exit 1; }
cat $C/smol.part0 .carry/train/b/smol.part1 > $C/smol.gguf || exit 1
test "$(stat -c %s $C/smol.gguf)" = 98362432 || { echo "bad gguf size"; exit 1; }
zcat .carry/train/b/corpus.jsonl.gz > $C/corpus.jsonl
rm -rf $C/repo && mkdir -p $C/repo && cp -r sfcompile benchmarks pyproject.toml $C/repo/
cd $C/repo
