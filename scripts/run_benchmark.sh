#!/usr/bin/env bash
# The benchmark of docs/benchmark.md, as one resumable background job: every method at its best on the held-out
# blocks of every anatomy and kernel of ../shared/data (chest: Philips B and L, Siemens B40f and B70f; abdomen;
# GE phantom), the shipped model's blocks (configs/data/shipped_model_blocks.json), at doses 0.1, 0.25 and 0.5.
#
#   nohup bash scripts/run_benchmark.sh SHARED_DATA_DIR WORK_DIR > WORK_DIR/benchmark.log 2>&1 &
#
# Every learned method (StructKPN, the 3-slice StructKPN, RED-CNN, BasicUNet, WavResNet) is trained as the shipped
# model was (50 epochs of the 149 training slices, 8 patches each: 59,600 patches) at the learning rate its 2-epoch
# pilots score best on the validation blocks; the ablations (paper Tables 2 and 3, the neighbour kernels of the
# 3-slice network, and RED-CNN trained at one dose against over every dose) get 10 epochs each. State (pilots, runs
# with their latest epoch checkpoint, per-method results) is kept in models/benchmark, so it can be committed and
# the same command continues on another machine; the simulated test slices go to WORK_DIR. Rerun after a kill:
# finished stages are skipped. On 2 CPU cores the whole job is about 11 h of compute (the report states it); on a
# GPU it runs unchanged (train.json picks the device). docs/benchmark.md is rewritten after every method and says
# what is still to run.
set -euo pipefail
data_dir=${1:?folder holding lung-pet-ct-dx, pancreatic-ct-cbct-seg and cct228-atcm-phantom}
work=${2:?work folder}
# the training pairs with each slice's neighbours (the multi-slice StructKPN's; the others read the slice alone);
# resumable: a datalist without neighbours is completed, the files there are kept
grep -qs label_slices "$work/pairs/datalist.json" || python scripts/prepare_shipped_model_data.py \
    --data_dir "$data_dir" --output_dir "$work/pairs" --blocks configs/data/shipped_model_blocks.json --neighbours 1
python scripts/benchmark.py --datalist "$work/pairs/datalist.json" --output_dir models/benchmark \
    --cache_dir "$work/benchmark_low_dose" --report docs/benchmark.md --slice_step 8 --doses 0.1 0.25 0.5 \
    --epochs 50 --ablation_epochs 10 --ablations loss kernel_size slices dose \
    --pretrained structkpn_shipped=models/model.pt --notes docs/benchmark_notes.md
