#!/usr/bin/env bash
# Train or fine-tune a gczoo model under torchrun (DDP): one CPU process, 8 GPUs, or several nodes.
# A thin wrapper: torchrun's own flags are passed to torchrun, everything else to `python -m gczoo.train`.
set -euo pipefail

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"

usage() {
    cat <<'EOF'
usage: scripts/train.sh [TORCHRUN FLAGS] [TRAINING FLAGS]

Runs: torchrun --nproc-per-node ${NPROC:-1} [TORCHRUN FLAGS] -m gczoo.train [TRAINING FLAGS]
(torchrun is `$PYTHON -m torch.distributed.run`; set PYTHON to pick the interpreter.)

torchrun flags passed through (both --a-b and --a_b spellings, "--flag VALUE" or "--flag=VALUE"):
  --nproc-per-node N     processes (GPUs) per node (default: $NPROC, else 1)
  --nnodes N|MIN:MAX     number of nodes (default: 1)
  --node-rank R          rank of this node (static rendezvous)
  --rdzv-endpoint H:P    rendezvous endpoint (c10d), e.g. node0:29400
  --rdzv-backend NAME    rendezvous backend (c10d, static)
  --rdzv-id ID           job id shared by all nodes; also names the run folder when restarts are on
  --master-addr HOST     master address (static rendezvous)
  --master-port PORT     master port (static rendezvous)
  --max-restarts N       restart the whole worker group up to N times after a failure;
                         each restart resumes from OUT/last.pth.tar
  --monitor-interval S   seconds between worker health checks
  --standalone           single-node rendezvous on a free port (the default when no
                         --nnodes/--rdzv-endpoint/--master-addr is given)

examples:
  scripts/train.sh                                      # 1 process, embedded digits dataset
  scripts/train.sh --nproc-per-node 8 --data-dir /data/imagenet --model resnet50_gc \
      --pretrained-backbone resnet50.a1_in1k --attn-lr-scale 10 --amp --amp-dtype bfloat16 --model-ema
  # two nodes (run on each, with --node-rank 0 / 1):
  scripts/train.sh --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29400 \
      --rdzv-id imagenet-gc --max-restarts 3 --experiment imagenet-gc --data-dir /data/imagenet

training flags (python -m gczoo.train --help):
EOF
}

torchrun_args=()
train_args=()
nproc="${NPROC:-1}"
multi_node=0
show_help=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nproc-per-node|--nproc_per_node)
            [[ $# -ge 2 ]] || { echo "train.sh: $1 needs a value" >&2; exit 2; }
            nproc="$2"; shift 2 ;;
        --nproc-per-node=*|--nproc_per_node=*)
            nproc="${1#*=}"; shift ;;
        --nnodes|--node-rank|--node_rank|--rdzv-endpoint|--rdzv_endpoint|--rdzv-backend|--rdzv_backend|\
        --rdzv-id|--rdzv_id|--master-addr|--master_addr|--master-port|--master_port|--max-restarts|\
        --max_restarts|--monitor-interval|--monitor_interval)
            [[ $# -ge 2 ]] || { echo "train.sh: $1 needs a value" >&2; exit 2; }
            case "$1" in --nnodes|--rdzv-endpoint|--rdzv_endpoint|--master-addr|--master_addr) multi_node=1 ;; esac
            torchrun_args+=("$1" "$2"); shift 2 ;;
        --nnodes=*|--node-rank=*|--node_rank=*|--rdzv-endpoint=*|--rdzv_endpoint=*|--rdzv-backend=*|\
        --rdzv_backend=*|--rdzv-id=*|--rdzv_id=*|--master-addr=*|--master_addr=*|--master-port=*|\
        --master_port=*|--max-restarts=*|--max_restarts=*|--monitor-interval=*|--monitor_interval=*)
            case "$1" in --nnodes=*|--rdzv-endpoint=*|--rdzv_endpoint=*|--master-addr=*|--master_addr=*) multi_node=1 ;; esac
            torchrun_args+=("$1"); shift ;;
        --standalone)
            shift ;;
        -h|--help)
            show_help=1; shift ;;
        *)
            train_args+=("$1"); shift ;;
    esac
done

if [[ "$show_help" == 1 ]]; then
    usage
    exec "$PYTHON" -m gczoo.train --help
fi

if [[ "$multi_node" == 0 ]]; then
    torchrun_args+=(--standalone)
fi

# torchrun shares its rendezvous TCPStore with the workers by default, and a restarted worker group can
# then read the dead group's addresses (pytorch/pytorch#135712, #167288: "Connection refused" in
# init_process_group after a restart). A store per worker group keeps --max-restarts working.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"

exec "$PYTHON" -m torch.distributed.run --nproc-per-node "$nproc" ${torchrun_args[@]+"${torchrun_args[@]}"} \
    -m gczoo.train ${train_args[@]+"${train_args[@]}"}
