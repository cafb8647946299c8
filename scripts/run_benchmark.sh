#!/usr/bin/env bash
# The benchmark of docs/benchmark.md: simulated low dose from the smooth-kernel chest CT in ../shared/data
# (Lung-PET-CT-Dx), split by patient: train on Lung_Dx-A0001 at dose 0.25 (64 slices), test on Lung_Dx-A0002
# (10 of its 30 slices, evenly spaced) at dose 0.25 and, for the dose curve, 0.1, 0.2, 0.33 and 0.5.
#
#   bash scripts/run_dev_benchmark.sh SHARED_DATA_DIR WORK_DIR [EPOCHS]
#
# Resumable: rerunning skips finished data, training runs and evaluations. On a GPU raise EPOCHS.
set -euo pipefail
source_dir=${1:?folder holding A0001-philips-kernel-B and A0002-siemens-B40f}
work=${2:?work folder}
epochs=${3:-6}
mkdir -p "$work/ndct-smooth"
for series in A0001-philips-kernel-B A0002-siemens-B40f; do
    [ -d "$work/ndct-smooth/$series" ] || cp -r "$source_dir/$series" "$work/ndct-smooth/$series"
done
python scripts/prepare_dataset.py --input "$work/ndct-smooth" --output "$work/paired" --dose_fraction 0.1 \
    --dose_fraction 0.2 --dose_fraction 0.25 --dose_fraction 0.33 --dose_fraction 0.5 --seed 0 --test_patients 1
python - "$work/paired/datalist.json" "$work/paired/datalist_benchmark.json" <<'PY'
import json, sys
entries = [e for split in json.load(open(sys.argv[1])).values() for e in split]
datalist = {
    "training": [e for e in entries if e["patient"] == "Lung_Dx-A0001" and e["dose_fraction"] == 0.25],
    "test": [e for e in entries if e["patient"] == "Lung_Dx-A0002"],
}
json.dump(datalist, open(sys.argv[2], "w"), indent=2)
print({k: len(v) for k, v in datalist.items()})
PY
python scripts/benchmark.py --datalist "$work/paired/datalist_benchmark.json" --output_dir "$work/benchmark" \
    --report docs/benchmark.md --dose 0.25 --max_test_slices 10 --epochs "$epochs" \
    --methods ldct bm3d ksvd redcnn wavresnet structkpn --ablations loss kernel_size preset \
    --pretrained structkpn_shipped=models/model.pt \
    --dose_methods ldct bm3d redcnn structkpn structkpn_shipped --notes docs/benchmark_notes.md
