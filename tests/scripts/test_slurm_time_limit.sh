#!/bin/bash
# The sbatch templates' time-limit handling (scripts/slurm/time_limit.sh), run without SLURM: the
# templates run as sbatch would run them, with SLURM's environment, a fake `scontrol` that records
# its arguments, a fake `srun` that runs its command, and a fake `dslens` that records its
# arguments, creates its output folder, and exits 143 on SIGTERM as dslens does once its state is
# saved. SLURM's warning before the time limit (--signal=B:USR1) is a USR1 sent to the script.
#
#   tests/scripts/test_slurm_time_limit.sh SOURCE_DIR
set -euo pipefail
src=${1:?usage: $0 SOURCE_DIR}
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

mkdir -p "${work}/bin" "${work}/repo/scripts/slurm" "${work}/log"
cp "${src}"/scripts/slurm/*.sh "${src}"/scripts/slurm/*.sbatch "${work}/repo/scripts/slurm/"
cat > "${work}/bin/dslens" <<'EOF'
#!/bin/bash
echo "$*" >> "${FAKE_LOG}/dslens.args"
out=
while (( $# )); do if [[ "$1" == --out ]]; then out=$2; fi; shift; done
mkdir -p "${out}"
touch "${out}/checkpoint.json"
trap 'echo term >> "${FAKE_LOG}/dslens.signals"; exit "${FAKE_EXIT_ON_TERM:-143}"' TERM
touch "${FAKE_LOG}/running"
while [[ ! -e "${FAKE_LOG}/finish" ]]; do sleep 0.05; done
exit 0
EOF
cat > "${work}/bin/scontrol" <<'EOF'
#!/bin/bash
if [[ "$1 $2" == "show hostnames" ]]; then echo node001; exit 0; fi
echo "$*" >> "${FAKE_LOG}/scontrol.args"
EOF
# srun: drop its options, run the command (one rank).
cat > "${work}/bin/srun" <<'EOF'
#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
exec "$@"
EOF
chmod +x "${work}"/bin/*

export PATH="${work}/bin:${PATH}" FAKE_LOG="${work}/log" SLURM_SUBMIT_DIR="${work}/repo"
export DSLENS="${work}/bin/dslens" SLURM_CPUS_PER_TASK=2

# attempt NAME TEMPLATE SIGNAL|finish [VAR=VALUE...]: runs the template with the job's environment
# and the extra variables, waits until dslens runs, then sends SIGNAL to the batch shell (or lets
# dslens finish). Sets $rc and $output.
attempt() {
  local name=$1 template=$2 action=$3
  shift 3
  rm -f "${FAKE_LOG}/running" "${FAKE_LOG}/finish" "${FAKE_LOG}/scontrol.args" \
    "${FAKE_LOG}/dslens.signals"
  # exec: $! is then the batch shell itself, which SLURM signals.
  (cd "${work}/repo" && exec env "$@" bash "scripts/slurm/${template}" > "${FAKE_LOG}/${name}.out" 2>&1) &
  local shell=$! waited=0
  until [[ -e "${FAKE_LOG}/running" ]]; do
    sleep 0.05
    waited=$((waited + 1))
    if (( waited > 400 )); then fail "${name}: dslens did not start"; cat "${FAKE_LOG}/${name}.out"; break; fi
  done
  if [[ "${action}" == finish ]]; then touch "${FAKE_LOG}/finish"; else kill "-${action}" "${shell}"; fi
  rc=0
  wait "${shell}" || rc=$?
  output=$(cat "${FAKE_LOG}/${name}.out")
}
expect_rc() { [[ "${rc}" == "$2" ]] || fail "$1: exit status ${rc}, expected $2; output: ${output}"; }
expect_requeue() {
  local got
  got=$(cat "${FAKE_LOG}/scontrol.args" 2>/dev/null || true)
  [[ "${got}" == "$2" ]] || fail "$1: scontrol called with '${got}', expected '$2'; output: ${output}"
}
expect_term() {
  [[ "$(cat "${FAKE_LOG}/dslens.signals" 2>/dev/null)" == term ]] ||
    fail "$1: dslens did not get one SIGTERM; output: ${output}"
}
last_args() { tail -n 1 "${FAKE_LOG}/dslens.args"; }

array=(SLURM_ARRAY_JOB_ID=500 SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_MAX=3
       SLURM_ARRAY_TASK_COUNT=4 SLURM_JOB_ID=501 CATALOGUE=configs/catalogue/)

# 1. The time-limit warning: dslens gets SIGTERM, and the task requeues itself once it has exited.
attempt first fit_array.sbatch USR1 "${array[@]}"
expect_rc "time limit" 143
expect_term "time limit"
expect_requeue "time limit" "requeue 501"
args=$(last_args)
[[ "${args}" == "fit configs/catalogue/ --out runs/catalogue-500/shard-1 --shard 1/4 --device cuda --threads 2" ]] ||
  fail "first attempt's arguments: ${args}"
[[ "${output}" == *"requeueing job 501 (requeue 1 of at most 5)"* ]] || fail "requeue message: ${output}"

# 2. The requeued task (same job id, SLURM_RESTART_COUNT=1) resumes in the same folder; when the
#    fit ends by itself nothing is requeued.
attempt requeued fit_array.sbatch finish "${array[@]}" SLURM_RESTART_COUNT=1 DEVICE=cpu
expect_rc "requeued attempt" 0
expect_requeue "requeued attempt" ""
[[ "$(last_args)" == *"--device cpu --threads 2 --resume" ]] || fail "requeued arguments: $(last_args)"

# 3. A cancel (scancel sends SIGTERM) stops dslens the same way but does not requeue.
attempt cancelled fit_array.sbatch TERM "${array[@]}"
expect_rc "cancel" 143
expect_term "cancel"
expect_requeue "cancel" ""

# 4. After MAX_REQUEUES requeues the task stops requeueing and says how to continue.
attempt limit fit_array.sbatch USR1 "${array[@]}" SLURM_RESTART_COUNT=2 MAX_REQUEUES=2
expect_rc "requeue limit" 143
expect_requeue "requeue limit" ""
[[ "${output}" == *"requeued 2 times (MAX_REQUEUES=2); not requeued again"* ]] ||
  fail "requeue limit message: ${output}"

# 5. A fit that fails at the warning instead of stopping cleanly is not requeued.
attempt failed fit_array.sbatch USR1 "${array[@]}" FAKE_EXIT_ON_TERM=1
expect_rc "failure" 1
expect_requeue "failure" ""
[[ "${output}" == *"exited with 1, not as a stop that can be resumed (143); not requeued"* ]] ||
  fail "failure message: ${output}"

# 6. The data-parallel VAE training: the warning reaches the rank through srun, the job requeues
#    itself whatever srun's status, and the requeued job resumes from the checkpoint.
vae=(SLURM_JOB_ID=601 SLURM_JOB_NODELIST=node001 SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1
     SLURM_LOCALID=0 OUT=runs/vae-test)
attempt vae train_vae_ddp.sbatch USR1 "${vae[@]}" FAKE_EXIT_ON_TERM=137
expect_rc "vae time limit" 137
expect_term "vae time limit"
expect_requeue "vae time limit" "requeue 601"
[[ "$(last_args)" != *--resume* ]] || fail "first vae attempt resumed: $(last_args)"
attempt vae-requeued train_vae_ddp.sbatch finish "${vae[@]}" SLURM_RESTART_COUNT=1
expect_rc "vae requeued" 0
[[ "$(last_args)" == "train-vae configs/train_vae_default.json --out runs/vae-test --device cuda --threads 2 --resume" ]] ||
  fail "requeued vae arguments: $(last_args)"

if (( failures > 0 )); then echo "${failures} check(s) failed" >&2; exit 1; fi
echo "all sbatch time-limit checks passed"
