# shellcheck shell=bash
# Sourced by the sbatch templates: runs one command so that a job stopped by its time limit puts
# itself back in the queue and continues from its checkpoint there.
#
# The templates ask SLURM for SIGUSR1 to the batch shell (#SBATCH --signal=B:USR1@300) a few
# minutes before the time limit. Only that warning sends USR1 (scancel and preemption send
# SIGTERM), so it tells a time limit from a cancel:
#   USR1        -> SIGTERM to the command, which stops where --resume continues (dslens exits 143);
#                  then `scontrol requeue` of this job, unless it has been requeued MAX_REQUEUES
#                  times already (SLURM_RESTART_COUNT), so that a job that makes no progress
#                  does not loop forever;
#   TERM or INT -> SIGTERM to the command, no requeue (a cancel; SLURM's own --requeue handles
#                  preemption and node failures).
# The requeued job runs the whole script again with the same job id, and the template adds
# --resume because the output folder exists.

# run_requeueable_until_time_limit CMD [ARGS...]: runs CMD in the background (a shell runs no
# trap while it waits for a foreground command), forwards the signals above and returns CMD's
# exit status. Requeues only when the time-limit warning came and CMD exited with
# one of REQUEUE_EXIT_CODES (default 143: dslens stopped on SIGTERM with its state saved; "any"
# takes every non-zero status, for srun, whose status after its ranks stop is less certain).
run_requeueable_until_time_limit() {
  local child rc=0 time_limit=0
  "$@" &
  child=$!
  trap 'time_limit=1; kill -TERM "${child}" 2>/dev/null || true' USR1
  trap 'kill -TERM "${child}" 2>/dev/null || true' TERM INT
  # wait returns early, with 128 + the signal, when a trapped signal arrives: wait until the
  # command has really ended, then ask once more for its own exit status (bash remembers it).
  while kill -0 "${child}" 2>/dev/null; do wait "${child}" || true; done
  wait "${child}" || rc=$?
  trap - USR1 TERM INT
  # A command that finished by itself as the warning came needs nothing more.
  if (( time_limit == 1 && rc != 0 )); then
    local restarts=${SLURM_RESTART_COUNT:-0} max=${MAX_REQUEUES:-5}
    local codes=${REQUEUE_EXIT_CODES:-143}
    if [[ "${codes}" != any && " ${codes} " != *" ${rc} "* ]]; then
      echo "$(date -Is) time limit: the command exited with ${rc}, not as a stop that can be" \
           "resumed (${codes}); not requeued" >&2
    elif (( restarts >= max )); then
      echo "$(date -Is) time limit: job ${SLURM_JOB_ID:-?} has been requeued ${restarts} times" \
           "(MAX_REQUEUES=${max}); not requeued again: resubmit it to continue" >&2
    else
      echo "$(date -Is) time limit: requeueing job ${SLURM_JOB_ID:-?} (requeue $((restarts + 1))" \
           "of at most ${max}); it continues from its checkpoint" >&2
      scontrol requeue "${SLURM_JOB_ID:?}" ||
        echo "$(date -Is) scontrol requeue failed: resubmit the job to continue" >&2
    fi
  fi
  return "${rc}"
}
