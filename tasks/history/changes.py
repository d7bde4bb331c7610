"""What changed since the previous run: in the data, and in each model's accuracy.

Plain functions over two `RunSnapshot`s, returning the JSON-ready record that becomes
`since_previous_run` in metrics.json, with a few sentences for the report. Classes are
matched by name, so runs whose classes differ compare what they share.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import stats

from tasks.evaluation.significance import ALPHA, mcnemar_exact, two_proportion_z_test
from tasks.history.db import LAST_RUN
from tasks.history.snapshots import RunSnapshot, SplitImages

MCNEMAR, Z_TEST = "McNemar", "two-proportion z-test"
SPLIT_NOUNS = {"train": "training", "test": "test"}
_LISTED = 3  # class changes, relabellings and drifts named in a sentence


def compare_runs(
    previous: RunSnapshot, current: RunSnapshot, tolerance: float, chosen: str = LAST_RUN
) -> dict:
    """`since_previous_run`: the data and the models of `current` against `previous`.

    Args:
        tolerance: the accuracy drop (0.01: one point) a significant drop must exceed
            to count as a regression.
        chosen: why `previous` is the run compared with (the champion's reason).
    """
    since = {
        "previous_run_id": previous.run_id,
        "previous_chosen": chosen,
        "previous_finished_at": previous.finished_at,
        "missing_models": sorted(set(previous.models) - set(current.models)),
        "regression_tolerance": tolerance,
        "same_test_images": previous.test_set_fingerprint == current.test_set_fingerprint,
        "data": compare_data(previous, current),
        "models": compare_models(previous, current, tolerance),
    }
    return since | {"summary": summarize(since)}


def compare_data(previous: RunSnapshot, current: RunSnapshot) -> dict:
    """Per split: class counts then and now, images added, removed and relabelled, and a
    Kolmogorov-Smirnov test of each shared class's per-image mean intensity."""
    shared = [split for split in current.splits if split in previous.splits]
    return {
        "changed": previous.data_fingerprint != current.data_fingerprint,
        "classes_added": [c for c in current.class_names if c not in previous.class_names],
        "classes_removed": [c for c in previous.class_names if c not in current.class_names],
        "splits": {
            split: compare_split(
                previous.splits[split],
                previous.class_names,
                current.splits[split],
                current.class_names,
            )
            for split in shared
        },
    }


def compare_split(
    previous: SplitImages,
    previous_names: tuple[str, ...],
    current: SplitImages,
    current_names: tuple[str, ...],
) -> dict:
    """One split of two runs. An image is the same when its pixels are; one in both runs
    under another class name was relabelled. Images held more than once count as often."""
    before_labels = np.asarray(previous_names)[previous.labels].tolist()
    now_labels = np.asarray(current_names)[current.labels].tolist()
    before_hashes, now_hashes = previous.hashes.tolist(), current.hashes.tolist()
    kept = Counter(before_hashes) & Counter(now_hashes)
    kept_same_label = Counter(zip(before_hashes, before_labels, strict=True)) & Counter(
        zip(now_hashes, now_labels, strict=True)
    )
    before_counts, now_counts = Counter(before_labels), Counter(now_labels)
    classes = {}
    for name in dict.fromkeys([*previous_names, *current_names]):
        entry = {"previous": before_counts[name], "current": now_counts[name]}
        entry["change"] = entry["current"] - entry["previous"]
        entry["drift"] = None  # for a class of one run only, or without images in one
        if name in previous_names and name in current_names:
            entry["drift"] = _drift(
                previous.mean_intensity[previous.labels == previous_names.index(name)],
                current.mean_intensity[current.labels == current_names.index(name)],
            )
        classes[name] = entry
    return {
        "images": {"previous": len(before_hashes), "current": len(now_hashes)},
        "added": len(now_hashes) - kept.total(),
        "removed": len(before_hashes) - kept.total(),
        "relabelled": kept.total() - kept_same_label.total(),
        "relabellings": _relabellings(before_hashes, before_labels, now_hashes, now_labels),
        "classes": classes,
    }


def _relabellings(
    before_hashes: list[int], before_labels: list[str], now_hashes: list[int], now_labels: list[str]
) -> list[dict]:
    """Relabelled images by old and new class, most first; of the images held once in
    each run (a duplicated image's labels cannot be paired)."""
    once_before = _held_once(before_hashes, before_labels)
    once_now = _held_once(now_hashes, now_labels)
    moves = Counter(
        (label, once_now[image])
        for image, label in once_before.items()
        if image in once_now and once_now[image] != label
    )
    return [{"from": a, "to": b, "images": n} for (a, b), n in moves.most_common()]


def _held_once(hashes: list[int], labels: list[str]) -> dict[int, str]:
    counts = Counter(hashes)
    return {image: label for image, label in zip(hashes, labels, strict=True) if counts[image] == 1}


def _drift(before: np.ndarray, now: np.ndarray) -> dict | None:
    if not len(before) or not len(now):
        return None
    result = stats.ks_2samp(before, now)
    p_value = float(result.pvalue)
    return {
        "statistic": float(result.statistic),
        "p_value": p_value,
        "significant": p_value < ALPHA,
    }


def compare_models(previous: RunSnapshot, current: RunSnapshot, tolerance: float) -> dict:
    """Each model of both runs: accuracy then and now, and whether the change is real.

    McNemar's exact test pairs the two runs' answers image by image when both ran on the
    same test images; otherwise only the two-proportion z-test applies. A regression is a
    significant drop of more than `tolerance`.
    """
    same_images = previous.test_set_fingerprint == current.test_set_fingerprint
    compared = {}
    for name, now in current.models.items():
        before = previous.models.get(name)
        if before is None:
            continue
        if same_images and len(before.correct) == len(now.correct):
            _, _, p_value = mcnemar_exact(before.correct, now.correct)
            test = MCNEMAR
        else:
            _, p_value = two_proportion_z_test(
                int(before.correct.sum()), len(before.correct),
                int(now.correct.sum()), len(now.correct),
            )  # fmt: skip
            test = Z_TEST
        change = now.accuracy - before.accuracy
        significant = p_value < ALPHA
        compared[name] = {
            "previous_accuracy": before.accuracy,
            "accuracy": now.accuracy,
            "change": change,
            "test": test,
            "p_value": p_value,
            "significant": significant,
            # Rounded: accuracies are fractions of images, and 0.85 - 0.84 > 0.01 in floats.
            "regression": significant and round(-change, 9) > tolerance,
        }
    return compared


def regressions(since: dict | None) -> list[dict]:
    """The models that regressed, each as its `models` entry with its name under "model"."""
    if not since:
        return []
    return [{"model": name} | row for name, row in since["models"].items() if row["regression"]]


def summarize(since: dict) -> list[str]:
    """A few plain sentences, the most important first: regressions, the data, the other
    models' real changes, and what did not change."""
    models, tolerance = since["models"], since["regression_tolerance"]
    regressed = [(n, row) for n, row in models.items() if row["regression"]]
    worse = [(n, r) for n, r in models.items() if r["significant"] and r["change"] < 0]
    better = [(n, r) for n, r in models.items() if r["significant"] and r["change"] > 0]
    within = [(n, r) for n, r in worse if not r["regression"]]
    sentences = []
    if regressed:
        ending = ", a regression" if len(regressed) == 1 else ", all regressions"
        sentences.append(_models_sentence("got worse", regressed, ending))
    sentences += data_sentences(since["data"])
    if missing := since.get("missing_models"):
        sentences.append(
            f"{_joined(missing)} ran in run {since['previous_run_id']} but not in this one "
            "(failed or left out)."
        )
    if better:
        sentences.append(_models_sentence("got better", better))
    if within:
        ending = f", within the {100 * tolerance:g}-point tolerance"
        sentences.append(_models_sentence("got slightly worse", within, ending))
    if models:
        changed = len(worse) + len(better)
        if changed < len(models):
            sentences.append(f"No {'other ' if changed else ''}model changed significantly.")
        if not since["same_test_images"]:
            sentences.append(
                f"The test images changed, so models were compared unpaired ({Z_TEST})."
            )
    return sentences


def data_sentences(data: dict) -> list[str]:
    """What changed in the data, split by split, and where the images drifted."""
    if not data["changed"]:
        return ["The data is unchanged."]
    sentences = []
    if data["classes_added"] or data["classes_removed"]:
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("new classes", data["classes_added"]),
                ("classes no longer present", data["classes_removed"]),
            )
            if names
        ]
        sentences.append(f"The classes changed; {'; '.join(parts)}.")
    for split, found in data["splits"].items():
        if sentence := _split_sentence(SPLIT_NOUNS.get(split, split), found):
            sentences.append(sentence)
    drifted = [
        (found["drift"]["statistic"], name, split, found["drift"]["p_value"])
        for split, entry in data["splits"].items()
        for name, found in entry["classes"].items()
        if found.get("drift") and found["drift"]["significant"]
    ]
    if drifted:
        named = [
            f"{name} ({SPLIT_NOUNS.get(split, split)}, KS D = {d:.2f}, {_p_text(p)})"
            for d, name, split, p in sorted(drifted, reverse=True)[:_LISTED]
        ]
        more = f" and {len(drifted) - _LISTED} more" if len(drifted) > _LISTED else ""
        sentences.append(f"Mean pixel intensity drifted in {', '.join(named)}{more}.")
    return sentences or ["The data changed, but no class count or image did."]


def _split_sentence(noun: str, split: dict) -> str | None:
    changed = sorted(
        ((name, c) for name, c in split["classes"].items() if c["change"]),
        key=lambda item: -abs(item[1]["change"]),
    )
    if not changed and not (split["added"] or split["removed"] or split["relabelled"]):
        return None
    counts = [
        f"{name} {c['previous']:,} → {c['current']:,} ({_signed(c['change'])})"
        for name, c in changed[:_LISTED]
    ]
    if len(changed) > _LISTED:
        counts.append(f"{len(changed) - _LISTED} more classes")
    images = (
        f"{split['added']:,} images added, {split['removed']:,} removed, "
        f"{split['relabelled']:,} relabelled"
    )
    moves = [f"{m['images']:,} from {m['from']} to {m['to']}" for m in split["relabellings"]]
    if moves:
        images += f" ({', '.join(moves[:_LISTED])}{', …' if len(moves) > _LISTED else ''})"
    return f"The {noun} data changed: {'; '.join(filter(None, [', '.join(counts), images]))}."


def _models_sentence(verb: str, rows: list[tuple[str, dict]], ending: str = "") -> str:
    if len(rows) == 1:
        ((name, row),) = rows
        return f"{name} {verb}: {change_text(row)}{ending}."
    details = "; ".join(f"{name} {change_text(row)}" for name, row in rows)
    return f"{_joined([name for name, _ in rows])} {verb}: {details}{ending}."


def change_text(row: dict) -> str:
    """A model's `models` entry in words: "0.842 → 0.801 (-4.1 points, McNemar p < 0.001)"."""
    return (
        f"{row['previous_accuracy']:.3f} → {row['accuracy']:.3f} "
        f"({_signed(round(100 * row['change'], 1))} points, {row['test']} "
        f"{_p_text(row['p_value'])})"
    )


def _signed(number: float) -> str:
    """+1,800, or -1,800 with a typographic minus sign."""
    return f"{number:+,}".replace("-", "\N{MINUS SIGN}")


def _p_text(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3g}"


def _joined(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
