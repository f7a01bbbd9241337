"""modeling/distributed.py is the one home of process-group start-up and the variable-size all-gather:
training (pretrain/distributed.py) and eval (eval/distributed.py) join and gather through it."""
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ["clipforge", "modeling", "pretrain", "eval", "launch", "bench"]


def places(pattern: str) -> list:
    out = subprocess.run(["git", "grep", "-lE", "--untracked", pattern, "--", *PACKAGES], cwd=REPO,
                         capture_output=True, text=True).stdout.splitlines()
    return sorted(out)


def test_no_second_copy_of_start_up_or_the_variable_size_gather():
    # the pieces a copy would repeat: the GPU per local rank, srun's variables read in Python (launch/slurm.py's
    # srun script maps them in bash), the padded gather's collective
    primitives = r"\.all_gather_single\(|\.all_gather_into_tensor\(|\.set_device\(|[\"']SLURM_PROCID[\"']"
    assert places(primitives) == ["modeling/distributed.py"]
    # each package joins only through start_process_group, handing it the one call that differs (DeepSpeed's or torch's)
    assert places(r"init_process_group\(|deepspeed\.init_distributed\(") == ["eval/distributed.py",
                                                                          "pretrain/distributed.py"]
    assert places(r"start_process_group\(") == ["eval/distributed.py", "modeling/distributed.py",
                                               "pretrain/distributed.py"]
