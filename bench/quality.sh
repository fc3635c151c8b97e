#!/usr/bin/env bash
# bench/quality.sh — the vision results tables on Fashion-MNIST (docs DIVERSEDISTILL.md §4,
# issue 13): converged students, a CNN foundation teacher, choices made on a holdout only.
#
#   1. fits the committee unless its checkpoints exist in the work dir (--refit forces it):
#      fm = CNN on `full` (12 epochs, lr 2e-3, --shift 1, cosine), vit = the small ViT on
#      `full` (second foundation teacher, three-teacher table only), comp7 / comp14 = MLP
#      512-512 on pool7 / pool14; measures each on test (student-trainer eval);
#   2. chooses the student recipe per table (A7/A14 x full/few): lr x epochs of `ce` with the
#      cosine schedule on --holdout 5000 (valid accuracy only, never test); every method of
#      that table then uses that recipe;
#   3. serves the teachers and asks each committee ONCE: one 1-epoch prefill run per
#      committee ({fm}, {fm,comp7}, {fm,comp14}, {fm,vit,comp14}) with `--record`, fetching
#      every output (logits, hidden, tokens: --dd-interactive asks for all) and the heads the
#      teachers lend; every later run that does not need live teachers is a `student-trainer
#      replay` of that record (bit-exact with train, interactive ones too; the record is only
#      read, so parallel runs share it safely);
#   4. tunes the distillation hyper-parameters on A14 few labels, --holdout 5000, by valid
#      accuracy: kd-weight x T (kd(comp)), the DiverseDistill router, its variant (answer
#      weight x interactive, mean of holdout seeds 1-2), the filter theta (--cache off);
#   5. runs 9 methods x 3 seeds x 4 tables, and the three-teacher table (fm+vit+comp14, A14
#      few labels) where filtering chooses among three teachers; --holdout 0, test read only
#      here. Filtered DiverseDistill is a replay with --dd-filter (the router's choice drops
#      the recorded outputs it does not keep; the report counts the outputs live --cache off
#      teachers would compute: every example x teacher x epoch less the skipped ones) — the
#      tuning's theta runs are live (--cache off), so the teachers' own counters check it;
#   6. a small DiverseDistill ablation on A14 few labels (QUALITY_ABLATION=0 skips it);
#   7. writes RESULTS/quality.md and quality.json (bench/quality/report.py).
#
# Every finished run is skipped on a rerun (its metrics hold the final epoch and it ran with the
# same arguments, kept in runs/NAME.args), so an interrupted run resumes cheaply and a changed
# choice reruns only what it changes. WORK/phases.jsonl records each phase's wall time.
# BUDGET: see the README ("DiverseDistill and the baselines") for the measured pieces.
#
# Usage: bench/quality.sh [--refit]        (make bench-quality)
# Environment: QUALITY_WORK (runs/quality), QUALITY_RESULTS (bench/results), QUALITY_SEEDS
#   ("1 2 3"), QUALITY_JOBS (2), QUALITY_TABLES ("A7:full A7:few A14:full A14:few"),
#   QUALITY_THREE (1: the three-teacher table), QUALITY_ABLATION (1), QUALITY_EPOCH_GRID
#   ("10 20 30 40"), QUALITY_LR_GRID ("1e-3 2e-3 5e-3"), QUALITY_HOLDOUT (5000),
#   QUALITY_MAX_TRAIN / QUALITY_MAX_TEST (0: all), QUALITY_FM_EPOCHS (12), QUALITY_VIT_EPOCHS
#   (15), QUALITY_COMP_EPOCHS (10); QUALITY_SMOKE=1 shrinks everything (2000/500 examples,
#   1-epoch teachers, 2-epoch students, 1 seed, one-point grids) to check the script end to end.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/build/bin}
PYTHON=${PYTHON:-/usr/bin/python3}
T=$BIN/teacher-server
S=$BIN/student-trainer
SMOKE=${QUALITY_SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
    : "${QUALITY_MAX_TRAIN:=2000}" "${QUALITY_MAX_TEST:=500}" "${QUALITY_HOLDOUT:=500}"
    : "${QUALITY_FM_EPOCHS:=1}" "${QUALITY_VIT_EPOCHS:=1}" "${QUALITY_COMP_EPOCHS:=1}"
    : "${QUALITY_EPOCH_GRID:=2}" "${QUALITY_LR_GRID:=2e-3 5e-3}" "${QUALITY_SEEDS:=1}"
    : "${QUALITY_KD_GRID_W:=0.9}" "${QUALITY_KD_GRID_T:=2}" "${QUALITY_ROUTERS:=learnability reliability}"
    : "${QUALITY_DD_ANSWERS:=1}" "${QUALITY_VARIANT_SEEDS:=1}" "${QUALITY_THETAS:=0.5}"
fi
WORK=${QUALITY_WORK:-$ROOT/runs/quality}
RESULTS=${QUALITY_RESULTS:-$ROOT/bench/results}
SEEDS=${QUALITY_SEEDS:-"1 2 3"}
JOBS=${QUALITY_JOBS:-2}
TABLES=${QUALITY_TABLES:-"A7:full A7:few A14:full A14:few"}
THREE=${QUALITY_THREE:-1}
ABLATION=${QUALITY_ABLATION:-1}
EPOCH_GRID=${QUALITY_EPOCH_GRID:-"10 20 30 40"}
LR_GRID=${QUALITY_LR_GRID:-"1e-3 2e-3 5e-3"}
TUNE_HOLDOUT=${QUALITY_HOLDOUT:-5000}
MAX_TRAIN=${QUALITY_MAX_TRAIN:-0}
MAX_TEST=${QUALITY_MAX_TEST:-0}
FM_EPOCHS=${QUALITY_FM_EPOCHS:-12}
VIT_EPOCHS=${QUALITY_VIT_EPOCHS:-15}
COMP_EPOCHS=${QUALITY_COMP_EPOCHS:-10}
KD_GRID_W=${QUALITY_KD_GRID_W:-"0.5 0.9"}
KD_GRID_T=${QUALITY_KD_GRID_T:-"2 4"}
ROUTERS=${QUALITY_ROUTERS:-"learnability reliability end-to-end"}
DD_ANSWERS=${QUALITY_DD_ANSWERS:-"1 0.1 0"}
TUNE_VARIANT_SEEDS=${QUALITY_VARIANT_SEEDS:-"1 2"}
THETAS=${QUALITY_THETAS:-"0.3 0.5"}
BATCH=128
SCHEDULE=cosine
LABEL_SEED=0
TUNE_SEED=1
REFIT=0
for arg in "$@"; do
    case $arg in
    --refit) REFIT=1 ;;
    -h | --help) sed -n 2,39p "$0"; exit 0 ;;
    *) echo "quality.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
for tool in jq bc; do
    command -v $tool >/dev/null || { echo "quality.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
export OPENBLAS_NUM_THREADS=1
DATA_OPTS=()
((MAX_TRAIN > 0)) && DATA_OPTS+=(--max-train "$MAX_TRAIN")
((MAX_TEST > 0)) && DATA_OPTS+=(--max-test "$MAX_TEST")
EVAL_OPTS=()
((MAX_TEST > 0)) && EVAL_OPTS+=(--max-test "$MAX_TEST")
mkdir -p "$WORK"/teachers "$WORK"/runs "$WORK"/sock "$WORK"/records "$RESULTS"
START=$(date +%s)
PHASE_START=$START
say() { printf '[quality %s +%ds] %s\n' "$(date +%H:%M:%S)" $(($(date +%s) - START)) "$*"; }
phase_done() { # name: appends the phase's wall seconds to WORK/phases.jsonl
    local now=$(date +%s)
    printf '{"phase": "%s", "seconds": %d, "at": %d}\n' "$1" $((now - PHASE_START)) "$now" >>"$WORK/phases.jsonl"
    PHASE_START=$now
}
run_report() { "$PYTHON" bench/quality/report.py "$WORK" "$RESULTS" "$@" >/dev/null || say "report failed"; }

# ---------------------------------------------------------------- 1. the committee
FM_SPEC=cnn:conv=32-64,pool=1-1,head=flatten,fc=256
VIT_SPEC=vit:image=28x28,patch=7,dim=64,depth=2,heads=4,mlp=128
fit() { # name view spec fit-options...
    local name=$1 view=$2 spec=$3 out=$WORK/teachers/$1.safetensors
    shift 3
    local args="--view $view --model $spec $* ${DATA_OPTS[*]}"
    if [[ -f $out && $REFIT == 0 && -f $WORK/teachers/$name.args && $(cat "$WORK/teachers/$name.args") == "$args" ]]; then
        say "teacher $name: $out exists, not refitting"; return 0
    fi
    say "fitting teacher $name ($args)"
    local t0=$(date +%s)
    "$T" fit $args --seed 1 --out "$out" >"$WORK/teachers/$name.log" 2>&1 ||
        { say "fit $name FAILED"; tail -5 "$WORK/teachers/$name.log"; return 1; }
    echo $(($(date +%s) - t0)) >"$WORK/teachers/$name.fit_seconds"
    echo "$args" >"$WORK/teachers/$name.args"
    rm -f "$WORK/teachers/$name.eval"
    say "teacher $name fitted in $(cat "$WORK/teachers/$name.fit_seconds") s"
}
# The CNN (the slow one) on one core; the ViT and the two MLPs on the other.
fit fm full "$FM_SPEC" --epochs "$FM_EPOCHS" --batch 128 --lr 2e-3 --shift 1 &
FIT_FM=$!
{ fit vit full "$VIT_SPEC" --epochs "$VIT_EPOCHS" --lr 2e-3 &&
    fit comp7 pool7 mlp:49-512-512-10 --epochs "$COMP_EPOCHS" --lr 1e-3 &&
    fit comp14 pool14 mlp:196-512-512-10 --epochs "$COMP_EPOCHS" --lr 1e-3; } || { kill $FIT_FM 2>/dev/null; exit 1; }

# ---------------------------------------------------------------- run machinery
final_epoch() { [[ -s $1 ]] && tail -n 1 "$1" | jq -r .epoch 2>/dev/null; }
# What a run's result depends on beyond its trainer arguments: the data subset and, for a run
# that asks teachers or replays a record, the teachers' checkpoints (TEACHERS_KEY, set once
# the committee is fitted): a refitted teacher reruns its prefill and everything downstream.
TEACHERS_KEY=""
run_key() { # command args... -> the line kept in runs/NAME.args
    local key="$*"
    ((${#DATA_OPTS[@]})) && key+=" #data ${DATA_OPTS[*]}"
    [[ " $* " == *" --teacher "* || " $* " == *" --record "* ]] && key+=" #teachers $TEACHERS_KEY"
    echo "$key"
}
same_args() { # name command args...: the finished run used these arguments
    local file=$WORK/runs/$1.args; shift
    [[ -f $file ]] && [[ $(cat "$file") == "$(run_key "$@")" ]]
}
RUN_PIDS=()
TRAINED=0 # runs started by this invocation (a rerun of a finished script starts none)
run() { # name epochs train|replay args...; runs in the background, JOBS at a time
    local name=$1 epochs=$2 command=$3
    shift 3
    local dir=$WORK/runs
    if [[ $(final_epoch "$dir/$name.jsonl") == "$epochs" ]] && same_args "$name" "$command" "$@"; then return 0; fi
    while :; do
        local keep=()
        for pid in "${RUN_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && keep+=("$pid"); done
        RUN_PIDS=("${keep[@]}")
        ((${#RUN_PIDS[@]} < JOBS)) && break
        sleep 0.2
    done
    TRAINED=$((TRAINED + 1))
    (
        rm -f "$dir/$name.jsonl" "$dir/$name.safetensors" "$dir/$name.safetensors.state"*
        run_key "$command" "$@" >"$dir/$name.args"
        local extra=()
        [[ $command == train ]] && extra+=(--http off)
        t0=$(date +%s.%N)
        "$S" "$command" "$@" "${extra[@]}" --progress off --label-seed "$LABEL_SEED" "${DATA_OPTS[@]}" \
            --out "$dir/$name.safetensors" --metrics "$dir/$name.jsonl" >"$dir/$name.log" 2>&1
        rc=$?
        t1=$(date +%s.%N)
        echo "$t1 - $t0" | bc >"$dir/$name.wall"
        rm -f "$dir/$name.safetensors.state"* # resumable state: not needed, large
        if ((rc == 0)) && [[ $(final_epoch "$dir/$name.jsonl") == "$epochs" ]]; then
            local acc=test # tuning runs: report the holdout only (choices never see test)
            [[ $name == tune-* ]] && acc=valid
            say "done $name: $acc $(tail -n 1 "$dir/$name.jsonl" | jq -r .${acc}_accuracy) ($(printf %.0f "$(cat "$dir/$name.wall")") s)"
        else
            say "FAILED $name (rc $rc):"; tail -n 3 "$dir/$name.log"
        fi
    ) &
    RUN_PIDS+=($!)
}
drain() {
    for pid in "${RUN_PIDS[@]}"; do wait "$pid"; done
    RUN_PIDS=()
}
last() { # run field: the final metrics line's field; a run without it stops the script
    local v
    v=$(tail -n 1 "$WORK/runs/$1.jsonl" 2>/dev/null | jq -r ".$2" 2>/dev/null)
    [[ $v =~ ^[0-9.eE+-]+$ ]] || { say "run $1 has no $2 (see $WORK/runs/$1.log)" >&2; kill -TERM $$; exit 1; }
    echo "$v"
}
gt() { (($(echo "$1 > $2" | bc -l))); }

view_of() { case $1 in A7) echo pool7 ;; A14) echo pool14 ;; esac; }
student_of() { case $1 in A7) echo mlp:49-64-64-10 ;; A14) echo mlp:196-64-64-10 ;; esac; }
comp_of() { case $1 in A7) echo comp7 ;; A14) echo comp14 ;; esac; }
frac_of() { case $1 in full) echo 1 ;; few) echo 0.1 ;; esac; }

# ---------------------------------------------------------------- 2. the recipe per table (ce, holdout)
# Runs while the CNN still fits (ce needs no teacher). Per table: lr x epochs of ce, cosine,
# seed 1, --holdout; the best valid accuracy wins (ties: the fewer epochs, then the lower lr).
say "recipes: ce, lr {$LR_GRID} x epochs {$EPOCH_GRID}, cosine, --holdout $TUNE_HOLDOUT"
for tl in $TABLES; do
    tab=${tl%%:*} labels=${tl##*:}
    for e in $EPOCH_GRID; do for lr in $LR_GRID; do
        run "tune-ce-$tab-$labels-e$e-lr$lr" "$e" train --view "$(view_of "$tab")" --model "$(student_of "$tab")" \
            --label-fraction "$(frac_of "$labels")" --seed $TUNE_SEED --holdout "$TUNE_HOLDOUT" \
            --method ce --epochs "$e" --lr "$lr" --schedule $SCHEDULE --batch $BATCH
    done; done
done
drain
declare -A EP LR
RECIPES_JSON=""
for tl in $TABLES; do
    tab=${tl%%:*} labels=${tl##*:}
    bestv=-1
    for e in $EPOCH_GRID; do for lr in $LR_GRID; do
        v=$(last "tune-ce-$tab-$labels-e$e-lr$lr" valid_accuracy)
        if gt "$v" "$bestv"; then bestv=$v; EP[$tl]=$e; LR[$tl]=$lr; fi
    done; done
    say "recipe $tab $labels: ${EP[$tl]} epochs, lr ${LR[$tl]} (ce valid $bestv)"
    RECIPES_JSON+="${RECIPES_JSON:+, }\"$tab-$labels\": {\"epochs\": ${EP[$tl]}, \"lr\": ${LR[$tl]}, \"ce_valid\": $bestv}"
done
recipe() { echo "--epochs ${EP[$1]} --lr ${LR[$1]} --schedule $SCHEDULE --batch $BATCH"; }
wait $FIT_FM || exit 1
phase_done "teachers and recipes"
for name in fm vit comp7 comp14; do
    if [[ ! -s $WORK/teachers/$name.eval ]]; then
        "$S" eval --model "$WORK/teachers/$name.safetensors" "${EVAL_OPTS[@]}" >"$WORK/teachers/$name.eval" 2>/dev/null ||
            { rm -f "$WORK/teachers/$name.eval"; say "eval of teacher $name failed"; exit 1; }
    fi
    say "teacher $name: $(cat "$WORK/teachers/$name.eval")"
done

# ---------------------------------------------------------------- 3. serve it, ask each committee once
SERVERS=()
stop_servers() {
    for pid in "${SERVERS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${SERVERS[@]}"; do wait "$pid" 2>/dev/null; done
}
trap 'stop_servers' EXIT
trap 'say "interrupted"; exit 130' INT TERM
serve() { # name -> endpoint ipc://WORK/sock/name.ipc
    local name=$1 log=$WORK/sock/$1.log
    rm -f "$WORK/sock/$name.ipc"
    "$T" serve --model "$WORK/teachers/$name.safetensors" --name "$name" \
        --bind "ipc://$WORK/sock/$name.ipc" --http off >"$log" 2>&1 &
    SERVERS+=($!)
    for _ in $(seq 1 300); do
        grep -q serving "$log" && return 0
        sleep 0.2
    done
    say "teacher server $name did not come up:"; tail -5 "$log"; exit 1
}
TEACHERS_KEY=$(cat "$WORK"/teachers/{fm,vit,comp7,comp14}.safetensors | sha256sum | cut -c1-16)
serve fm; serve vit; serve comp7; serve comp14
ep() { echo "ipc://$WORK/sock/$1.ipc"; }
say "teacher servers up (fm, vit, comp7, comp14)"

# Committees (trainer-side teacher names fm, vit, comp): teacher options and record file.
committee() { # fm | fm-comp7 | fm-comp14 | fm-vit-comp14
    case $1 in
    fm) echo "--teacher fm=$(ep fm)" ;;
    fm-comp7) echo "--teacher fm=$(ep fm) --teacher comp=$(ep comp7)" ;;
    fm-comp14) echo "--teacher fm=$(ep fm) --teacher comp=$(ep comp14)" ;;
    fm-vit-comp14) echo "--teacher fm=$(ep fm) --teacher vit=$(ep vit) --teacher comp=$(ep comp14)" ;;
    esac
}
record_of() { echo "$WORK/records/$1.record"; }
PREFILLS="fm fm-comp7 fm-comp14"
[[ $THREE == 1 ]] && PREFILLS+=" fm-vit-comp14"
for c in $PREFILLS; do
    # One epoch of interactive DiverseDistill fetches logits, hidden and tokens of every teacher
    # for every training example; --record keeps them. The student of this run is thrown away.
    run "prefill-$c" 1 train $(committee "$c") --view pool14 --model mlp:196-64-64-10 --method diversedistill \
        --dd-interactive --epochs 1 --seed 1 --record "$(record_of "$c")"
    drain # one at a time: the teachers' forward passes are the work here
    [[ -s $(record_of "$c") ]] || { say "prefill of $c wrote no record"; exit 1; }
done
phase_done "prefill"

# Method -> command and options for table $1 (A7|A14); uses KD_W KD_T DD_W DD_T DD_ROUTER
# DD_THETA DD_EXTRA. Replays read the committee's record (its heads too, for --dd-interactive).
method_args() {
    local tab=$1 method=$2 pair=fm-$(comp_of "$1")
    local kdopts="--temperature $KD_T --kd-weight $KD_W"
    local ddopts="--method diversedistill --temperature $DD_T --kd-weight $DD_W --dd-router $DD_ROUTER${DD_EXTRA:+ $DD_EXTRA}"
    dd_on() { echo "replay --record $(record_of "$1") $ddopts"; } # committee
    dd_filter() { # committee: live with --cache off (the teachers' savings are real) when
        # FILTER_LIVE=1 (the tuning), else a replay of its record with the router's choice
        # applied to the recorded outputs (report.py counts what live teachers would compute)
        if ((${FILTER_LIVE:-0})); then echo "train $(committee "$1") $ddopts --dd-filter $DD_THETA --cache off"
        else echo "replay --record $(record_of "$1") $ddopts --dd-filter $DD_THETA"; fi
    }
    case $method in
    ce) echo "train --method ce" ;;
    kd-fm) echo "replay --record $(record_of fm) --method kd --kd-teacher fm $kdopts" ;;
    kd-comp) echo "replay --record $(record_of "$pair") --method kd --kd-teacher comp $kdopts" ;;
    avg-kd) echo "replay --record $(record_of "$pair") --method avg-kd $kdopts" ;;
    ca-mkd) echo "replay --record $(record_of "$pair") --method ca-mkd $kdopts" ;;
    fitnet-fm) echo "replay --record $(record_of fm) --method fitnet --kd-teacher fm --fitnet-teacher fm $kdopts" ;;
    dd-fm) dd_on fm ;;
    dd-both) dd_on "$pair" ;;
    dd-filter) dd_filter "$pair" ;;
    # the three-teacher table (A14 only)
    kd-vit) echo "replay --record $(record_of fm-vit-comp14) --method kd --kd-teacher vit $kdopts" ;;
    avg-kd3) echo "replay --record $(record_of fm-vit-comp14) --method avg-kd $kdopts" ;;
    ca-mkd3) echo "replay --record $(record_of fm-vit-comp14) --method ca-mkd $kdopts" ;;
    dd-three) dd_on fm-vit-comp14 ;;
    dd-three-filter) dd_filter fm-vit-comp14 ;;
    # ablation: the complementary teacher alone (live: no record of comp14 alone; it is cheap)
    dd-comp-only) echo "train --teacher comp=$(ep "$(comp_of "$tab")") $ddopts" ;;
    esac
}
METHODS="ce kd-fm kd-comp avg-kd ca-mkd fitnet-fm dd-fm dd-both dd-filter"
RUN_ORDER="dd-filter dd-both dd-fm fitnet-fm ca-mkd avg-kd kd-fm kd-comp ce" # slow runs first
THREE_METHODS="dd-three-filter dd-three ca-mkd3 avg-kd3 kd-vit"

# ---------------------------------------------------------------- 4. tuning on the holdout
# Regime A14 few labels (its recipe), seed 1, --holdout (the last examples of the training
# split, never trained on). Stage 1: kd-weight x T on kd(comp); the winner is used by every
# distillation method. Stage 2: the router target (fm+comp). Stage 2b: the variant, answer
# weight x interactive, by the mean over holdout seeds. Stage 3: theta (--cache off): the largest
# whose valid accuracy is within 0.3 points of the unfiltered winner, else the best.
TUNE_TAB=A14
TUNE_TL=A14:few
if [[ -z ${EP[$TUNE_TL]:-} ]]; then # QUALITY_TABLES without A14:few: choose its recipe anyway
    say "QUALITY_TABLES lacks $TUNE_TL, which the tuning needs"; exit 2
fi
tune_common() { # seed
    echo "--view pool14 --model mlp:196-64-64-10 --label-fraction 0.1 --seed $1 --holdout $TUNE_HOLDOUT $(recipe $TUNE_TL)"
}
TE=${EP[$TUNE_TL]}
say "tuning on $TUNE_TAB few labels, seed $TUNE_SEED, holdout $TUNE_HOLDOUT, $TE epochs, lr ${LR[$TUNE_TL]}"
DD_ROUTER=learnability DD_EXTRA="" DD_THETA=0
for w in $KD_GRID_W; do for t in $KD_GRID_T; do
    KD_W=$w KD_T=$t DD_W=$w DD_T=$t
    set -- $(method_args $TUNE_TAB kd-comp)
    cmd=$1; shift
    run "tune-kd-comp-w$w-T$t" "$TE" "$cmd" $(tune_common $TUNE_SEED) "$@"
done; done
drain
best=""; bestv=-1
for w in $KD_GRID_W; do for t in $KD_GRID_T; do
    v=$(last "tune-kd-comp-w$w-T$t" valid_accuracy)
    if gt "$v" "$bestv"; then bestv=$v; best="$w $t"; fi
done; done
read -r KD_W KD_T <<<"$best"
DD_W=$KD_W DD_T=$KD_T
say "chosen kd family: kd-weight $KD_W temperature $KD_T (valid $bestv)"
tune_run() { # name seed method (with the current DD_* settings)
    local name=$1 seed=$2
    set -- $(method_args $TUNE_TAB "$3")
    local cmd=$1; shift
    run "$name" "$TE" "$cmd" $(tune_common "$seed") "$@"
}
for r in $ROUTERS; do DD_ROUTER=$r tune_run "tune-dd-$r" $TUNE_SEED dd-both; done
drain
bestv=-1
for r in $ROUTERS; do
    v=$(last "tune-dd-$r" valid_accuracy)
    if gt "$v" "$bestv"; then bestv=$v; best=$r; fi
done
DD_ROUTER=$best
say "chosen DiverseDistill router: $DD_ROUTER (valid $bestv)"
DD_VARIANTS=""
for a in $DD_ANSWERS; do for i in off on; do DD_VARIANTS+=" a$a-i$i"; done; done
variant_args() { # a<λ>-i<off|on> -> trainer options
    local a=${1%%-i*} i=${1##*-i} options=()
    a=${a#a}
    [[ $a == 1 ]] || options+=(--dd-answer-weight "$a")
    [[ $i == on ]] && options+=(--dd-interactive)
    echo "${options[*]}"
}
variant_run() { # variant seed -> tuning run name (a1-ioff on the tuning seed is stage 2's run)
    if [[ $1 == a1-ioff && $2 == "$TUNE_SEED" ]]; then echo "tune-dd-$DD_ROUTER"; else echo "tune-ddv-$DD_ROUTER-$1-s$2"; fi
}
for v in $DD_VARIANTS; do for s in $TUNE_VARIANT_SEEDS; do
    name=$(variant_run "$v" "$s")
    [[ $name == tune-dd-* ]] && continue
    DD_EXTRA=$(variant_args "$v") tune_run "$name" "$s" dd-both
done; done
drain
bestv=-1
for v in $DD_VARIANTS; do
    sum=0
    for s in $TUNE_VARIANT_SEEDS; do sum=$(echo "$sum + $(last "$(variant_run "$v" "$s")" valid_accuracy)" | bc -l); done
    mean=$(echo "$sum / $(echo $TUNE_VARIANT_SEEDS | wc -w)" | bc -l)
    say "variant $v: mean valid $(printf %.4f "$mean")"
    if gt "$mean" "$bestv"; then bestv=$mean; DD_VARIANT=$v; fi
done
DD_EXTRA=$(variant_args "$DD_VARIANT")
DD_UNFILTERED_VALID=$(last "$(variant_run "$DD_VARIANT" "$TUNE_SEED")" valid_accuracy)
say "chosen DiverseDistill variant: $DD_VARIANT (mean valid $(printf %.4f "$bestv"); options '${DD_EXTRA}')"
for th in $THETAS; do DD_THETA=$th FILTER_LIVE=1 tune_run "tune-ddf-$DD_ROUTER-$DD_VARIANT-th$th" $TUNE_SEED dd-filter; done
drain
DD_THETA=""; bestv=-1; besttheta=""
for th in $(echo $THETAS | tr ' ' '\n' | sort -gr); do # largest first
    v=$(last "tune-ddf-$DD_ROUTER-$DD_VARIANT-th$th" valid_accuracy)
    if [[ -z $DD_THETA ]] && (($(echo "$v >= $DD_UNFILTERED_VALID - 0.003" | bc -l))); then DD_THETA=$th; fi
    if gt "$v" "$bestv"; then bestv=$v; besttheta=$th; fi
done
[[ -n $DD_THETA ]] || DD_THETA=$besttheta
say "chosen filter theta: $DD_THETA"
cat >"$WORK/chosen.json" <<EOF
{"kd_weight": $KD_W, "temperature": $KD_T, "dd_kd_weight": $DD_W, "dd_temperature": $DD_T,
 "dd_router": "$DD_ROUTER", "dd_variant": "$DD_VARIANT", "dd_extra": "$DD_EXTRA",
 "tune_variant_seeds": "$TUNE_VARIANT_SEEDS", "dd_filter": $DD_THETA, "batch": $BATCH, "schedule": "$SCHEDULE",
 "recipes": {$RECIPES_JSON}, "epoch_grid": "$EPOCH_GRID", "lr_grid": "$LR_GRID",
 "kd_grid_w": "$KD_GRID_W", "kd_grid_t": "$KD_GRID_T", "routers": "$ROUTERS", "dd_answers": "$DD_ANSWERS",
 "thetas": "$THETAS", "label_seed": $LABEL_SEED, "tune_table": "$TUNE_TAB", "tune_labels": "few",
 "tune_seed": $TUNE_SEED, "tune_holdout": $TUNE_HOLDOUT, "seeds": "$SEEDS", "tables": "$TABLES",
 "three": $THREE, "max_train": $MAX_TRAIN, "max_test": $MAX_TEST, "smoke": $SMOKE,
 "teacher_epochs": {"fm": $FM_EPOCHS, "vit": $VIT_EPOCHS, "comp7": $COMP_EPOCHS, "comp14": $COMP_EPOCHS}}
EOF
phase_done "tuning"

# ---------------------------------------------------------------- 5. the tables
table_run() { # table:labels method seed [name]
    local tl=$1 m=$2 s=$3 tab=${1%%:*} labels=${1##*:}
    local name=${4:-$tab-$labels-$m-s$s}
    set -- $(method_args "$tab" "$m")
    local cmd=$1; shift
    run "$name" "${EP[$tl]}" "$cmd" --view "$(view_of "$tab")" --model "$(student_of "$tab")" \
        --label-fraction "$(frac_of "$labels")" --holdout 0 --seed "$s" $(recipe "$tl") "$@"
}
say "tables: $TABLES (9 methods x seeds $SEEDS)"
for tl in $TABLES; do
    for m in $RUN_ORDER; do for s in $SEEDS; do table_run "$tl" "$m" "$s"; done; done
    drain
    say "table ${tl/:/ } complete"
    phase_done "table ${tl/:/ }"
    run_report
done
if [[ $THREE == 1 ]]; then
    say "three-teacher table: fm+vit+comp14 on A14 few labels"
    for m in $THREE_METHODS; do for s in $SEEDS; do table_run A14:few "$m" "$s" "A14-few3-$m-s$s"; done; done
    drain
    phase_done "three-teacher table"
    run_report
fi

# ---------------------------------------------------------------- 6. ablation
# A14 few labels, table settings (--holdout 0, test accuracy), each row the chosen DiverseDistill
# (fm+comp) with one thing changed: the other router targets, the attended feature (CNN tokens
# vs hidden vector), the interactive probes flipped, and the complementary teacher alone. These
# runs choose nothing; they only show what each part does.
if [[ $ABLATION == 1 ]]; then
    say "ablation on A14 few labels"
    CHOSEN_A=${DD_VARIANT%%-i*} CHOSEN_I=${DD_VARIANT##*-i}
    [[ $CHOSEN_I == on ]] && FLIP_I=off || FLIP_I=on
    SAVED_ROUTER=$DD_ROUTER SAVED_EXTRA=$DD_EXTRA
    for s in $SEEDS; do
        for r in learnability reliability end-to-end; do
            [[ $r == "$SAVED_ROUTER" ]] && continue
            DD_ROUTER=$r table_run A14:few dd-both "$s" "abl-A14-few-router-$r-s$s"
        done
        DD_EXTRA="$SAVED_EXTRA --dd-feature hidden" table_run A14:few dd-both "$s" "abl-A14-few-feature-hidden-s$s"
        DD_EXTRA=$(variant_args "$CHOSEN_A-i$FLIP_I") table_run A14:few dd-both "$s" "abl-A14-few-interactive-$FLIP_I-s$s"
        DD_EXTRA="$SAVED_EXTRA" table_run A14:few dd-comp-only "$s" "abl-A14-few-dd-comp-only-s$s"
    done
    drain
    phase_done "ablation"
fi
run_report --final $(($(date +%s) - START)) --trained "$TRAINED"
say "finished in $(($(date +%s) - START)) s ($TRAINED runs trained by this invocation); see $RESULTS/quality.md"
