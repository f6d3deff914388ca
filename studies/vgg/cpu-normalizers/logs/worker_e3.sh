#!/bin/bash
# One queue worker: claims each VGG run in order (mkdir is atomic) and trains it alone with --only.
# $1: worker id; $2 (optional): a pid to wait for before starting.
id=$1
if [ -n "$2" ]; then while kill -0 "$2" 2>/dev/null; do sleep 20; done; fi
cd /tmp/run13-vgg
export PYTHONPATH=/tmp/run13-vgg OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
OUT=/work/main/runs/vgg-cpu-normalizers
for run in standard_lr0.01 batchnorm_lr0.01 layernorm_lr0.01 groupnorm_lr0.01 weightnorm_lr0.01; do
  mkdir /tmp/vggq/claim.$run 2>/dev/null || continue
  echo "$(date -u +%FT%TZ) worker $id starts ${run}_seed0" >> /tmp/vggq/schedule.log
  python -m minibn.studies.vgg --preset cpu --experiments E1,E3,E4 --variants layernorm groupnorm weightnorm \
      --data-dir /work/shared/data/cifar10 --out $OUT --jobs 1 --resume --only ${run}_seed0 \
      >> /tmp/vggq/worker$id.log 2>&1
  echo "$(date -u +%FT%TZ) worker $id ends ${run}_seed0 rc=$?" >> /tmp/vggq/schedule.log
done
