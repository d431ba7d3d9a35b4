#!/bin/bash
# One mid-design point per new optimizer x norm combination, scale-invariant arm, seed 0, v3 budget.
set -u
run() { OMP_NUM_THREADS=1 python -m l2bn.train --optimizer $1 --norm $2 --lr $3 --l2 $4 --update l2 --l2-scope normalized --scale-invariant --epochs 7 --batch-size 32 --width 8 --n-train 8192 --n-test 1000 --eval-last 1 --augment --data-dir .cache/cifar10 --device cpu > results/breadth/pilot/$1_$2.log 2>&1; }
run adamw batch 0.005 0.2
run adamw weight 0.005 0.2
run sgd layer 0.05 0.04
run sgd instance 0.05 0.04
run adam layer 0.012 0.035555556
run adam instance 0.012 0.035555556
