"""sbatch script templates. `@NAME@` placeholders are filled with values that are already
shell-quoted (launch/slurm.py `q()`); bash's own `${...}` stays untouched."""
import re

PRETRAIN = r"""#!/bin/bash
# Written by `clipforge launch slurm`. Self-contained: `sbatch @SCRIPT@` submits it again.
# Preemption: slurm sends SIGUSR1 to this script before the time limit (--signal below); it asks
# the trainer to checkpoint and stop, then requeues this job, which resumes from the checkpoint.
@HEADER@
set -uo pipefail

run_dir=@RUN_DIR@
log_dir=@LOG_DIR@
cd @WORKDIR@ || exit 1
mkdir -p "$log_dir"
@EXPORTS@

restarts=${SLURM_RESTART_COUNT:-0}
echo "clipforge: job $SLURM_JOB_ID start $(date -u +%FT%TZ) SLURM_RESTART_COUNT=$restarts nodes=$SLURM_JOB_NODELIST" \
    | tee -a "$log_dir/restarts.log"
if [ -e "$run_dir/DONE" ]; then
    echo "clipforge: $run_dir/DONE exists: this run already finished; nothing to do"
    exit 0
fi

# rendezvous on the first node of the allocation; the port is derived from the job id, so a
# requeued job (same id) and every node agree on it without talking to each other
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))
export MASTER_ADDR MASTER_PORT

resume=()
if [ -s "$run_dir/checkpoints/latest" ]; then
    resume=(checkpoint.resume=latest)
    echo "clipforge: resuming from checkpoint $(cat "$run_dir/checkpoints/latest")"
fi

preempted=0
warn() {
    preempted=1
    echo "clipforge: warning signal before the time limit: asking the trainer to checkpoint and stop"
    scancel --signal=USR1 "$SLURM_JOB_ID"   # all job steps (the ranks), not this batch script
}
trap warn USR1

@SRUN@ &
step=$!
# `wait` returns early (>128) when the trap runs; wait again until the step has really ended
wait "$step"
while kill -0 "$step" 2>/dev/null; do wait "$step"; done
wait "$step"; rc=$?

if [ "$rc" -eq 0 ]; then
    touch "$run_dir/DONE"
    echo "clipforge: training finished (wrote $run_dir/DONE; a requeue of this job does nothing)"
    exit 0
fi
if [ "$preempted" -eq 1 ]; then
    if [ "$restarts" -ge @MAX_REQUEUES@ ]; then
        echo "clipforge: stopped at a checkpoint, but already requeued $restarts times (--max-requeues); giving up"
        exit "$rc"
    fi
    echo "clipforge: trainer stopped at a checkpoint (exit $rc); requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "clipforge: training failed (exit $rc); not requeueing. Log: $log_dir/slurm-$SLURM_JOB_ID.out"
exit "$rc"
"""


def fill(template: str, values: dict) -> str:
    """Replace every @NAME@; a placeholder without a value is a bug, not silent empty text."""
    def one(match):
        return values[match.group(1)]
    text = re.sub(r"@([A-Z_]+)@", one, template)
    missing = set(values) - set(re.findall(r"@([A-Z_]+)@", template))
    if missing:
        raise KeyError(f"values without a placeholder: {sorted(missing)}")
    return text
