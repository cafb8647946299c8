#!/usr/bin/env bash
# Recipe of the shipped models/model.pt: the dose-aware StructKPN ("lite" preset), trained with the bundle's own
# train.json on simulated low dose from every series in ../shared/data: chest (Philips B and L kernels), abdomen
# (Philips) and the GE ATCM phantom. The held-out blocks (chest patient Lung_Dx-A0002 with both Siemens kernels, the
# superior block of every other series) are in configs/data/shipped_model_blocks.json. Three stages:
#
#   1. broad: dose fractions 0.05-0.95 drawn log-uniformly, incident counts 0.25-2.5x the simulator's (a decade),
#      learning rate 2e-4, EPOCHS epochs (cosine schedule), into WORK_DIR/run;
#   2. gentle: from stage 1's weights, doses drawn uniformly (as many above 0.5 as below) and incident counts
#      0.25-8x (added noise down to a third of the simulator's: sharp kernels, whose own noise dwarfs what a dose
#      reduction adds, keep their texture), learning rate 1e-4, FINETUNE_EPOCHS epochs, into WORK_DIR/run_gentle;
#   3. relative: from stage 2's weights, as stage 2 but with each patch's loss divided by its input's
#      (configs/losses/relative_to_input.json: a dose-0.9 patch weighs as much as a dose-0.05 one), learning rate
#      5e-5, RELATIVE_EPOCHS epochs, into WORK_DIR/run_relative.
#
# The same command runs unchanged on a GPU (the device is picked by the config); raise the epochs there.
#
#   bash scripts/train_shipped_model.sh SHARED_DATA_DIR WORK_DIR [EPOCHS [FINETUNE_EPOCHS [RELATIVE_EPOCHS]]]
#
# Resumable: each stage continues from its latest checkpoint in WORK_DIR, else from the committed state of that
# stage (models/training_state.pt, models/training_state_gentle.pt, models/training_state_relative.pt: weights,
# optimizer, scheduler and epoch), else it starts: stage 1 from the previous single-dose shipped model (commit
# 7bf69aa) with zero weights on the two new input channels, so the untrained dose-aware network filters as that
# model did; stage 2 from stage 1's weights, stage 3 from stage 2's.
# Validation (held-out z-blocks at doses 0.1 and 0.5) is for monitoring only: the shipped weights are the final
# epoch's, so no held-out block selects the model.
set -euo pipefail
data_dir=${1:?folder holding lung-pet-ct-dx, pancreatic-ct-cbct-seg and cct228-atcm-phantom}
work=${2:?work folder}
epochs=${3:-30}
finetune_epochs=${4:-20}
relative_epochs=${5:-8}
python scripts/prepare_shipped_model_data.py --data_dir "$data_dir" --output_dir "$work/pairs" \
    --blocks configs/data/shipped_model_blocks.json

finished() {  # is the training state $1 at its last epoch?
    [ -f "$1" ] && python - "$1" <<'PY'
import sys, torch
trainer = torch.load(sys.argv[1], map_location="cpu", weights_only=False)["trainer"]
sys.exit(0 if trainer["iteration"] >= trainer["max_epochs"] * trainer["epoch_length"] else 1)
PY
}

train() {  # train stage into folder $1, committed state $2, first start $3, config file(s) $4, then overrides
    local run=$1 state=$2 first=$3 config=$4
    shift 4
    mkdir -p "$run"
    local start latest
    latest=$(ls -t "$run"/training_checkpoint_*.pt 2>/dev/null | head -1 || true)
    if [ -n "$latest" ]; then
        start=(--resume_from "$latest")
    elif [ -f "$state" ]; then
        start=(--resume_from "$state")
    else
        start=(--init_weights "$first")
    fi
    python -m monai.bundle run training --meta_file configs/metadata.json --config_file "$config" \
        --logging_file configs/logging.conf --dataset_dir "$work/pairs" --datalist "$work/pairs/datalist.json" \
        --ckpt_dir "$run" --output_dir "$run/eval" --val_interval 10 "${start[@]}" "$@"
    cp "$run/training_final.pt" "$state"
}

weights() {  # the model weights of training state $1 into file $2
    python - "$1" "$2" <<'PY'
import sys, torch
torch.save(torch.load(sys.argv[1], map_location="cpu", weights_only=False)["model"], sys.argv[2])
PY
}

if ! finished models/training_state.pt; then
    if [ ! -f models/training_state.pt ]; then
        git show 7bf69aa:models/model.pt > "$work/single_dose_model.pt"
        python - "$work/single_dose_model.pt" "$work/init_dose_aware.pt" <<'PY'
import sys, torch
from bundle.networks import dose_aware_state_dict
torch.save(dose_aware_state_dict(torch.load(sys.argv[1], map_location="cpu")), sys.argv[2])
PY
    fi
    train "$work/run" models/training_state.pt "$work/init_dose_aware.pt" configs/train.json --epochs "$epochs"
fi
if ! finished models/training_state_gentle.pt; then
    weights models/training_state.pt "$work/broad_model.pt"
    train "$work/run_gentle" models/training_state_gentle.pt "$work/broad_model.pt" configs/train.json --epochs "$finetune_epochs" \
        --learning_rate 0.0001 --dose_distribution uniform --photon_factor_range "[0.25, 8.0]"
fi
if ! finished models/training_state_relative.pt; then
    weights models/training_state_gentle.pt "$work/gentle_model.pt"
    train "$work/run_relative" models/training_state_relative.pt "$work/gentle_model.pt" \
        "['configs/train.json','configs/losses/relative_to_input.json']" --epochs "$relative_epochs" \
        --learning_rate 0.00005 --dose_distribution uniform --photon_factor_range "[0.25, 8.0]"
fi
weights models/training_state_relative.pt models/model.pt
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \
    --meta_file configs/metadata.json --config_file configs/inference.json
sha256sum models/model.pt models/model.ts
