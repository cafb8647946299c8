#!/usr/bin/env bash
# Recipe of the shipped models/model.pt: simulated low dose from the smooth-kernel chest CT in
# ../shared/data (Lung-PET-CT-Dx), four dose fractions, trained with the bundle's own train.json.
# The same command runs unchanged on a GPU (the device is picked by the config); raise --epochs there.
#
#   bash scripts/train_shipped_model.sh SHARED_DATA_DIR WORK_DIR [EPOCHS]
#
# Resumable: rerunning skips finished data and continues from WORK_DIR/run/training_final.pt or the
# latest per-epoch checkpoint.
set -euo pipefail
source_dir=${1:?folder holding A0001-philips-kernel-B and A0002-siemens-B40f}
work=${2:?work folder}
epochs=${3:-30}
mkdir -p "$work/ndct-smooth"
for series in A0001-philips-kernel-B A0002-siemens-B40f; do
    [ -d "$work/ndct-smooth/$series" ] || cp -r "$source_dir/$series" "$work/ndct-smooth/$series"
done
python scripts/prepare_dataset.py --input "$work/ndct-smooth" --output "$work/paired" \
    --dose-fraction 0.1 --dose-fraction 0.2 --dose-fraction 0.33 --dose-fraction 0.5 --seed 0 --test-patients 1
# Two patients only: train on Lung_Dx-A0001 (64 slices), hold out Lung_Dx-A0002 (30 slices) for testing.
python - "$work/paired/datalist.json" "$work/paired/datalist_a0001_train.json" <<'PY'
import json, sys
entries = [e for split in json.load(open(sys.argv[1])).values() for e in split]
datalist = {
    "training": [e for e in entries if e["patient"] == "Lung_Dx-A0001" and e["dose_fraction"] != 0.25],
    "validation": [e for e in entries if e["patient"] == "Lung_Dx-A0002" and e["dose_fraction"] == 0.2],
    "test": [e for e in entries if e["patient"] == "Lung_Dx-A0002" and e["dose_fraction"] != 0.25],
}
json.dump(datalist, open(sys.argv[2], "w"), indent=2)
print({k: len(v) for k, v in datalist.items()})
PY
resume=()
latest=$(ls -t "$work"/run/training_checkpoint_*.pt 2>/dev/null | head -1 || true)
[ -n "$latest" ] && resume=(--resume_from "$latest")
# Validation (the held-out patient at dose 0.2) is for monitoring only: the shipped weights are the
# final epoch's, not the best validation checkpoint, so the test patient does not select the model.
python -m monai.bundle run training --meta_file configs/metadata.json --config_file configs/train.json \
    --logging_file configs/logging.conf --dataset_dir "$work/paired" \
    --datalist "$work/paired/datalist_a0001_train.json" --ckpt_dir "$work/run" --output_dir "$work/run/eval" \
    --epochs "$epochs" --val_interval 10 "${resume[@]}"
python - "$work/run/training_final.pt" models/model.pt <<'PY'
import sys, torch
torch.save(torch.load(sys.argv[1], map_location="cpu")["model"], sys.argv[2])
PY
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \
    --meta_file configs/metadata.json --config_file configs/inference.json
sha256sum models/model.pt models/model.ts
