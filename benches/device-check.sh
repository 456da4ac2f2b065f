#!/usr/bin/env bash
# The one-call GPU check: on a machine with a GPU, torch and transformers
# but no Rust and no network, runs in one command (under 8 minutes on an H200) and prints one
# markdown table:
#   - the machine: GPU, driver, torch and transformers versions;
#   - the demo (`make demo`'s run) on CUDA: wall time, images/s, zero-shot top-1 / top-5;
#   - throughput at ViT-B/32 size, batch 256, of the trainer (fine-tuning a randomly
#     initialised CLIPModel folder on a synthetic JSONL manifest) in fp32 and bf16, against
#     transformers.CLIPModel in fp32 and under bfloat16 autocast (benches/device_check.py);
#     peak GPU memory of each process as nvidia-smi samples it (and torch's own peaks for
#     PyTorch), host syncs per step, and the trainer/PyTorch ratio per precision;
#   - a one-process data-parallel run through NCCL (torchrun's variables, WORLD_SIZE=1)
#     against the same run without them: wall time, images/s, and whether the weights agree.
# A row that fails shows the last lines of its log, and the check goes on to the next.
#
# It owns benches/device_check.py (inputs, the PyTorch side, the table) and
# benches/device_check_sync.c (a preload that turns on torch's sync debug mode in the
# trainer, which has no Python to call torch.cuda.set_sync_debug_mode).
#
# Prepare here, where Rust is: `make device-check`, which fills target/device-check/ (ignored
# by git) with the stripped trainer, Fashion-MNIST, CLIP's BPE vocabulary (the trainer reads
# it at run time for a --model folder without tokenizer.json; the standard policies are in
# the binary) and the preload. Then, with the device tool:
#   carry ["target/device-check"], command `bash benches/device-check.sh target/device-check`
# The table is also written to $OUT/device-check.md, and the small files of every row (logs,
# run.json, run.log, metrics.jsonl, eval.json, nvidia-smi samples) to
# $OUT/device-check-rows.tar.gz.
#
# Without a GPU, DEVICE_CHECK_SMOKE=1 runs the same rows on the CPU at toy sizes (a tiny
# CLIPConfig, batch 8, a few steps) in under a minute on two cores, to check the script itself.
# Python: $TRAINER_PYTHON if set, else python3. DEVICE_CHECK_WORK=DIR keeps the runs there
# (by default they go to a temporary folder, removed at the end); DEVICE_CHECK_BUDGET=S
# changes the seconds the rows may take together (450; 170 in smoke mode), after which the
# remaining rows are skipped.

set -u -o pipefail

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: bash benches/device-check.sh <folder made by \`make device-check\`>" >&2
    exit 2
fi
carried=$(cd "$1" && pwd)
benches=$(cd "$(dirname "$0")" && pwd)
helper=$benches/device_check.py
python=${TRAINER_PYTHON:-python3}
trainer=$carried/trainer
fashion_mnist=$carried/fashion-mnist
smoke=${DEVICE_CHECK_SMOKE:-0}
if [ -n "${DEVICE_CHECK_WORK:-}" ]; then
    work=$DEVICE_CHECK_WORK
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    rm -rf "$work/rows"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")
    # The ViT-B/32 runs leave gigabytes of weights behind.
    trap 'rm -rf "$work"' EXIT
fi

if [ "$smoke" = 1 ]; then
    device=cpu demo_steps=20 vit_size=smoke vit_images=64 vit_batch=8 vit_steps=6 warmup=2 pytorch_steps=4
    dp_steps=20 sync_steps=(2 4) budget=170
    vit_label="(smoke: tiny CLIPConfig, batch 8)" demo_label="demo (smoke: 20 steps, CPU)"
    dp_label="data-parallel WORLD_SIZE=1 (Gloo on CPU), 20 steps"
else
    device=cuda demo_steps=1000 vit_size=vit-b32 vit_images=2048 vit_batch=256 vit_steps=40 warmup=10 pytorch_steps=30
    dp_steps=200 sync_steps=(5 15) budget=450
    vit_label="ViT-B/32, batch 256" demo_label="demo (cosine_warmup, 1000 steps, CUDA)"
    dp_label="data-parallel WORLD_SIZE=1 (NCCL), 200 steps"
fi
budget=${DEVICE_CHECK_BUDGET:-$budget}
printf '{"warmup": %d, "sync_steps": [%d, %d], "vit_label": "%s", "demo_label": "%s", "dp_label": "%s", "plain_label": "%s"}\n' \
    "$warmup" "${sync_steps[0]}" "${sync_steps[1]}" "$vit_label" "$demo_label" "$dp_label" \
    "single process, $dp_steps steps" > "$work/settings.json"

# The Fashion-MNIST demo captions from its own word list; a --model folder without
# tokenizer.json needs OpenAI's BPE, which the trainer looks for under $HOME. A HOME of our
# own also gives the compiled-policy cache a writable place.
mkdir -p "$work/home/.cache/trainer/open_clip"
cp "$carried/bpe_simple_vocab_16e6.txt.gz" "$work/home/.cache/trainer/open_clip/" 2> /dev/null ||
    echo "warning: $carried has no bpe_simple_vocab_16e6.txt.gz; the ViT rows will fail" >&2
torch_lib=$("$python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2> /dev/null)
trainer_env=(env "HOME=$work/home" "LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
has_smi=0
command -v nvidia-smi > /dev/null && has_smi=1

{
    if [ $has_smi = 1 ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 | tr '\n' ';'
    else
        printf 'no nvidia-smi;'
    fi
    "$python" -c 'import torch, transformers; print(f" torch {torch.__version__} (CUDA available: \
{torch.cuda.is_available()}), transformers {transformers.__version__};", end="")' 2>&1 | tail -1
    printf ' %s CPUs' "$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
} > "$work/machine"

started=$SECONDS
now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }

# run_row KEY LIMIT COMMAND...: runs COMMAND (its output in rows/KEY/log) under a time limit
# cut to what is left of the budget, recording its pid (the command execs from a shell that
# wrote it, so nvidia-smi's samples can be matched to it), start and end, and exit status,
# while nvidia-smi samples the GPU's compute processes and used memory.
run_row() {
    local key=$1 limit=$2
    shift 2
    local dir=$work/rows/$key
    mkdir -p "$dir"
    printf '%q ' "$@" > "$dir/command"
    local left=$((budget - (SECONDS - started)))
    if [ "$left" -lt 20 ]; then
        echo "skipped: the check's ${budget} s were spent" > "$dir/skipped"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local samplers=""
    if [ $has_smi = 1 ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits > "$dir/gpu_idle" 2> /dev/null
        nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits -lms 200 > "$dir/apps.csv" 2> /dev/null &
        samplers="$!"
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$dir/gpu.csv" 2> /dev/null &
        samplers="$samplers $!"
    fi
    now > "$dir/start"
    timeout -k 10 "$limit" bash -c 'echo $$ > "$0"; exec "$@"' "$dir/pid" "$@" > "$dir/log" 2>&1
    local rc=$?
    now > "$dir/end"
    echo "$rc" > "$dir/rc"
    for pid in $samplers; do
        kill "$pid" 2> /dev/null
        wait "$pid" 2> /dev/null
    done
    printf '%-28s rc %-3s %5.0f s elapsed\n' "$key" "$rc" "$((SECONDS - started))" >&2
    return "$rc"
}

trainer_cmd=("${trainer_env[@]}" "$trainer" train --device "$device" --policy cosine_warmup --overwrite)

# 1. The demo, as `make demo` runs it (1000 steps is its default), on the carried data.
run_row demo 150 "${trainer_cmd[@]}" --run-dir "$work/rows/demo/run" --data "$fashion_mnist" --steps "$demo_steps"

# 2. ViT-B/32-sized throughput. lr 1e-3 as on the PyTorch side; a skipped (non-finite) step
# leaves out the optimizer, so such steps do not stop the run but are counted in the table.
vit=$work/vit
run_row prepare 120 "$python" "$helper" prepare "$vit" "$vit_images" "$vit_size"
vit_args=(--model "$vit/model" --data "$vit/manifest.jsonl" --batch-size "$vit_batch" --lr 1e-3 --max-skipped-steps 0)
for precision in fp32 bf16; do
    run_row "trainer-$precision" 150 "${trainer_cmd[@]}" "${vit_args[@]}" --precision "$precision" \
        --steps "$vit_steps" --run-dir "$work/rows/trainer-$precision/run"
done
for precision in fp32 bf16; do
    run_row "pytorch-$precision" 120 "$python" "$helper" pytorch "$vit/model/config.json" "$vit_batch" "$precision" \
        "$warmup" "$pytorch_steps" "$device" "$work/rows/pytorch-$precision/reply.json"
done

# 3. One process through the data-parallel path, against the same run without it.
dp_args=(--data "$fashion_mnist" --steps "$dp_steps")
run_row plain 120 "${trainer_cmd[@]}" "${dp_args[@]}" --run-dir "$work/rows/plain/run"
run_row dp 120 env WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 \
    "${trainer_cmd[@]}" "${dp_args[@]}" --run-dir "$work/rows/dp/run"
run_row dp-compare 60 "$python" "$helper" compare "$work/rows/plain/run" "$work/rows/dp/run" \
    "$work/rows/dp-compare/reply.json"
# Weights that differ say little until two plain runs are known to agree on this GPU.
if [ -f "$work/rows/dp-compare/reply.json" ] && grep -q '"identical_bytes": false' "$work/rows/dp-compare/reply.json"; then
    run_row plain-repeat 120 "${trainer_cmd[@]}" "${dp_args[@]}" --run-dir "$work/rows/plain-repeat/run" &&
        run_row plain-repeat-compare 60 "$python" "$helper" compare "$work/rows/plain/run" \
            "$work/rows/plain-repeat/run" "$work/rows/plain-repeat-compare/reply.json"
fi

# 4. The trainer's host syncs per step: torch's sync debug mode (warn), turned on by the
# preload, prints a line per sync; two lengths, so start-up and the end cancel out. Last,
# because they are the first rows to give up when time runs short.
for precision in fp32 bf16; do
    for steps in "${sync_steps[@]}"; do
        run_row "syncs-$precision-$steps" 90 "${trainer_env[@]}" "LD_PRELOAD=$carried/sync_debug.so" \
            TORCH_CPP_LOG_LEVEL=WARNING "$trainer" \
            train --device "$device" --policy cosine_warmup --overwrite "${vit_args[@]}" --precision "$precision" \
            --steps "$steps" --run-dir "$work/rows/syncs-$precision-$steps/run"
    done
done

table=$("$python" "$helper" report "$work" 2>&1) || table="| check | result |
|---|---|
| report | FAILED: $(printf '%s' "$table" | tail -3 | tr '\n|' '  ') |"
echo
echo "$table"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    echo "$table" > "$OUT/device-check.md"
    # The small files of each row; the logs cut to their last 2,000 lines.
    (
        cd "$work" &&
            for log in rows/*/log; do
                tail -n 2000 "$log" > "$log.tail"
            done &&
            find settings.json machine rows -maxdepth 3 -type f \
                \( -name '*.tail' -o -name command -o -name rc -o -name start -o -name end -o -name pid \
                -o -name '*.csv' -o -name gpu_idle -o -name reply.json -o -name run.json -o -name run.log \
                -o -name metrics.jsonl -o -name eval.json -o -name evaluations.jsonl -o -name settings.json \
                -o -name machine \) -print0 |
            tar -czf "$OUT/device-check-rows.tar.gz" --null -T -
    ) || echo "warning: the rows' files could not be packed" >&2
fi
