"""The report of benchmarks/real_routing.py: its summary as markdown tables, and a reading of them
in sentences that quote the numbers (which router beats always asking the better model, with a
sign test corrected for the number of routers compared; which matches it for less)."""

from __future__ import annotations

SIGNIFICANCE = 0.05


def labels_of(summary: dict) -> dict[str, str]:
    """Each role's (small, large) model as the report names it."""
    return {role: model["label"] for role, model in summary["models"].items()}


# Report ----------------------------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def model_table(rows: list[dict], group: str, labels: dict[str, str]) -> list[str]:
    small, large = labels["small"], labels["large"]
    lines = [f"| {group} | test items | {small} | {large} | only {small} right | only {large} right | both right | "
             f"whole suite ({small} / {large}) | better on the fitting split |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        better = labels.get(row["better_on_fit"], row["better_on_fit"])
        lines.append(f"| {row[group]} | {row['test_items']} | {_percent(row['small'])} | {_percent(row['large'])} | "
                     f"{row['only_small']} | {row['only_large']} | {row['both']} | "
                     f"{_percent(row['small_all_items'])} / {_percent(row['large_all_items'])} | {better} |")
    return lines


def strategy_table(summary: dict) -> list[str]:
    better = labels_of(summary)[summary["better_model"]]
    lines = [f"| strategy | accuracy | large calls | cost / request | vs always {better}: points (won / lost, p) | "
             "best in hindsight: accuracy (large calls) | APGR | CPT(50 %) | CPT(80 %) | reported setting |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, figures in summary["strategies"].items():
        chosen, hindsight, versus = figures["chosen"], figures["best_in_hindsight"], figures["vs_better_model"]
        delta = 100 * (chosen["accuracy"] - summary["strategies"][f"{better} alone"]["chosen"]["accuracy"])
        lines.append(
            f"| {name} | {_percent(chosen['accuracy'])} | {_percent(chosen['large_share'])} | {chosen['cost']:.0f} | "
            f"{delta:+.1f} ({versus['won']} / {versus['lost']}, p {versus['sign_test_p']:.2f}) | "
            f"{_percent(hindsight['accuracy'])} ({_percent(hindsight['large_share'])}) | {_number(figures['apgr'])} | "
            f"{_percent(figures['cpt50'])} | {_percent(figures['cpt80'])} | {figures['how_chosen']} |")
    random = summary["random"]
    lines.append(f"| random | - | - | - | - | - | {_number(random['apgr'])} | {_percent(random['cpt50'])} | "
                 f"{_percent(random['cpt80'])} | expected over the share of large calls |")
    return lines


def category_table(summary: dict) -> list[str]:
    categories = [row["category"] for row in summary["categories"] if row["category"] != "all"]
    lines = ["| strategy | " + " | ".join(categories) + " | all |", "| --- |" + " --- |" * (len(categories) + 1)]
    for name, figures in summary["strategies"].items():
        by_category = figures["accuracy_by_category"]
        lines.append(f"| {name} | " + " | ".join(_percent(by_category.get(category)) for category in categories)
                     + f" | {_percent(figures['chosen']['accuracy'])} |")
    return lines


def matching_table(summary: dict) -> list[str]:
    better = labels_of(summary)[summary["better_model"]]
    base = summary["strategies"][f"{better} alone"]["chosen"]
    lines = [f"| router | setting (cheapest on the fitting split at least as accurate there as always {better}) | "
             f"accuracy | large calls | cost / request (of always {better}'s) | vs always {better}: points "
             "(won / lost, p) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, figures in summary["strategies"].items():
        matching = figures.get("cheapest_matching")
        if matching is None:
            continue
        point, versus = matching["point"], matching["vs_better_model"]
        lines.append(f"| {name} | {matching['setting_on_fit']} | {_percent(point['accuracy'])} | "
                     f"{_percent(point['large_share'])} | {point['cost']:.0f} ({_percent(point['cost'] / base['cost'])}) | "
                     f"{100 * (point['accuracy'] - base['accuracy']):+.1f} ({versus['won']} / {versus['lost']}, "
                     f"p {versus['sign_test_p']:.2f}) |")
    return lines


def reading(summary: dict) -> list[str]:
    """What the figures say, in sentences that quote them."""
    figures, labels = summary["strategies"], labels_of(summary)
    better = summary["better_model"]
    other = "small" if better == "large" else "large"
    base = figures[f"{labels[better]} alone"]["chosen"]
    rival = figures[f"{labels[other]} alone"]["chosen"]
    lines = [f"- The more accurate model alone is {labels[better]} ({better}): {_percent(base['accuracy'])}, against "
             f"{_percent(rival['accuracy'])} for {labels[other]}, at a cost of {base['cost']:.0f} per request "
             f"against {rival['cost']:.0f}."]
    routers = {name: each for name, each in figures.items() if each["kind"] == "router"}
    lines += _against_the_better_model(routers, base, labels[better], summary["items"]["test"])
    lines += _matching_for_less(routers, base, labels[better])
    if routers:
        name, each = max(routers.items(), key=lambda entry: entry[1]["best_in_hindsight"]["accuracy"])
        point = each["best_in_hindsight"]
        lines.append(f"- At its best setting in hindsight (chosen on the test split itself, so optimistic) the best "
                     f"router, {name}, would reach {_percent(point['accuracy'])} with "
                     f"{_percent(point['large_share'])} large calls ({point['setting']}).")
    for name, each in figures.items():
        if each["kind"] == "oracle":
            lines.append(f"- {name}: {_versus(each['chosen'], each['vs_better_model'], base)}, "
                         f"{_percent(each['chosen']['large_share'])} large calls, cost {each['chosen']['cost']:.0f}.")
    return lines + _gap_notes(figures, labels)


def _against_the_better_model(routers: dict, base: dict, better: str, test_items: int) -> list[str]:
    """Which routers beat always asking the better model, with a sign test corrected for the
    number of routers compared (Bonferroni)."""
    needed = SIGNIFICANCE / max(1, len(routers))
    above = {name: each for name, each in routers.items() if each["chosen"]["accuracy"] > base["accuracy"]}
    clear = {name: each for name, each in above.items() if each["vs_better_model"]["sign_test_p"] < needed}
    lines = [f"- {name} beats always asking {better}: {_versus(each['chosen'], each['vs_better_model'], base)}, with "
             f"{_percent(each['chosen']['large_share'])} large calls, cost {each['chosen']['cost']:.0f} per request."
             for name, each in clear.items()]
    unclear = {name: each for name, each in above.items() if name not in clear}
    if unclear:
        lines.append(f"- Above always asking {better} at the setting chosen on the fitting split, but within the noise "
                     f"of {test_items} test items ({len(routers)} routers compared, so a sign test needs p < "
                     f"{needed:.4f}): " + "; ".join(f"{name} {_versus(each['chosen'], each['vs_better_model'], base)}"
                                                     for name, each in unclear.items()) + ".")
    if not clear and routers:
        name, each = max(routers.items(), key=lambda entry: entry[1]["chosen"]["accuracy"])
        lines.append(f"- So no routing clearly beats always asking {better}." if above else
                     f"- No routing beats always asking {better}. The best router at the setting chosen on the "
                     f"fitting split, {name}, reaches {_versus(each['chosen'], each['vs_better_model'], base)}.")
    return lines


def _matching_for_less(routers: dict, base: dict, better: str) -> list[str]:
    """Whether the routers set to match the better model for less (on the fitting split) still
    match it on the test split."""
    matching = {name: each["cheapest_matching"] for name, each in routers.items() if each["cheapest_matching"]}
    if not matching:
        return []
    held = {name: each for name, each in matching.items() if each["point"]["accuracy"] >= base["accuracy"]}
    cheaper = [name for name, each in held.items() if each["point"]["cost"] < base["cost"]]
    parts = [f"{name} matches it at {_percent(held[name]['point']['cost'] / base['cost'])} of its cost, "
             f"{_versus(held[name]['point'], held[name]['vs_better_model'], base)}" for name in cheaper]
    parts += [f"{name} only at {_percent(each['point']['cost'] / base['cost'])} of its cost"
              for name, each in held.items() if name not in cheaper]
    short = [100 * (each["point"]["accuracy"] - base["accuracy"]) for name, each in matching.items()
             if name not in held]
    if short:
        parts.append(f"the other {len(short)} fall short of it by {-max(short):.1f} to {-min(short):.1f} points")
    return [f"- Routers set on the fitting split to match always {better} at the least cost, on the test split: "
            + "; ".join(parts) + "."]


def _gap_notes(figures: dict, labels: dict[str, str]) -> list[str]:
    small = figures[f"{labels['small']} alone"]["chosen"]["accuracy"]
    if figures[f"{labels['large']} alone"]["chosen"]["accuracy"] <= small:
        return ["- APGR and CPT are not defined here: the large model is not the more accurate one on the test "
                "split, so there is no gap between them for routing to recover."]
    above_one = [name for name, each in figures.items() if (each["apgr"] or 0) > 1]
    if not above_one:
        return []
    return [f"- APGR above 1 ({', '.join(above_one)}): the curve runs above the large model's accuracy, as it can "
            f"where the small model is right on items the large one gets wrong."]


def _versus(point: dict, versus: dict, base: dict) -> str:
    return (f"{_percent(point['accuracy'])} ({100 * (point['accuracy'] - base['accuracy']):+.1f} points: "
            f"{versus['won']} won, {versus['lost']} lost, p = {versus['sign_test_p']:.3f})")


def markdown_report(summary: dict) -> str:
    items, prices, labels = summary["items"], summary["prices"], labels_of(summary)
    lines = [
        "# Routing between two real small language models",
        "",
        f"`small` is {labels['small']}, `large` is {labels['large']}; each answers greedily through our engine "
        f"(float32, CPU). Price per token: the parameters it multiplies, in millions (small {prices['small']:g}, "
        f"large {prices['large']:g}); a request's cost is its prompt and completion tokens times the price, the "
        f"cascade's small attempt included. {items['suite']} items: {items['fit']} in the fitting split (routers "
        f"fitted, settings chosen), {items['test']} in the test split (every figure below), split by task.",
        "",
        f"Answers cut by max_tokens before their stop string on the test split: {labels['small']} "
        f"{summary['length_stops']['small']}, {labels['large']} {summary['length_stops']['large']}.",
    ]
    if "run" in summary:
        run = summary["run"]
        generated = "; ".join(f"{labels[role]} answered {each['generated']} items in {each['seconds']:.0f} s"
                              for role, each in run["generation"].items())
        if any(each["generated"] < items["suite"] for each in run["generation"].values()):
            generated += f"; the other answers read from {run['answers_file']}"
        lines += ["", f"Run time: {run['seconds']:.0f} s in all ({generated})."]
    lines += ["", "## Each model per category (test split)", "",
              *model_table(summary["categories"], "category", labels),
              "", "## Each model per task (test split)", "", *model_table(summary["tasks"], "task", labels),
              "", "## Strategies (test split)", "", *strategy_table(summary),
              "", "## Accuracy per category at the reported setting", "", *category_table(summary),
              "", f"## Matching always {labels[summary['better_model']]} for less", "", *matching_table(summary),
              "", "## Reading", "", *reading(summary)]
    for name, reason in summary["skipped"].items():
        lines.append(f"- Left out: {name} ({reason}).")
    return "\n".join(lines) + "\n"


