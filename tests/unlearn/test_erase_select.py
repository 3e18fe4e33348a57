"""RECE's round selection in the erase workflow (reference train_object.py): the rule by hand and the validation
split (another template than the evaluation grid); the erase run that keeps the selected round is in
test_erase_new_methods.py (it shares that file's micro pipeline)."""

from unlearn.erase import best_round, validation_rows


def r(k, target, other):
    return {"round": k, "val_target_acc": target, "val_other_acc": other}


def test_best_round_by_hand():
    # round 2 has the lowest target accuracy but loses 0.2 of the others': excluded; round 1 kept
    assert best_round([r(0, 0.9, 0.9), r(1, 0.5, 0.85), r(2, 0.2, 0.7), r(3, 0.6, 0.95)]) == 1
    # ties on target: higher other accuracy, then the earlier round
    assert best_round([r(0, 0.9, 0.9), r(1, 0.4, 0.8), r(2, 0.4, 0.9), r(3, 0.4, 0.9)]) == 2
    # no round beats UCE on target accuracy (or all lose too much): the UCE edit is kept
    assert best_round([r(0, 0.5, 0.9), r(1, 0.5, 1.0), r(2, 0.1, 0.79)]) == 0
    assert best_round([r(0, 0.5, 0.9), r(1, 0.1, 0.79)], slack=0.2) == 1


def test_validation_split_is_not_the_evaluation_grid():
    from unlearn.data.tinyshapes import eval_prompts

    grid = {x["prompt"] for x in eval_prompts()}
    rows = validation_rows("circle")
    assert len(rows) == 16 and not grid & {x["prompt"] for x in rows}
    assert {"prompt": "a red circle", "shape": "circle", "colour": "red"} in rows
    rows = validation_rows("black")
    assert len(rows) == 12 and all("colour" not in x for x in rows) and not grid & {x["prompt"] for x in rows}
