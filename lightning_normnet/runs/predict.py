"""`normnet predict`: any method's checkpoint (or several NormNet checkpoints voting) on one scan, the
lesion mask written in the scan's own geometry; with a report, its numbers (JSON) and a picture (PNG)."""
from __future__ import annotations

import json
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..io import check_output_file, read_ct, read_mask, write_image, write_text
from ..lungmask import lung_mask
from ..inference import predict_scan
from ..report import infection_report, report_figure
from .checkpoints import load_model

STEPS = 5


@contextmanager
def all_or_none(outputs: list[Path]):
    """The outputs are written together (each call of the yielded `done(path)` records one): where one
    fails, those written before it, and the folders made for them, are removed again."""
    made = [f for f in {o.parent for o in outputs} if not f.exists()]
    written: list[Path] = []
    try:
        yield written.append
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in sorted(made, key=lambda f: len(f.parts), reverse=True):
            with suppress(OSError):
                folder.rmdir()
        raise


def predict(checkpoints: list[str], scan: str, output: str, report: str | None = None,
            lung_file: str | None = None, overrides: list[str] | tuple[str, ...] = (),
            series: str | None = None) -> dict:
    """Predict, write the mask (and the report), return the report's numbers. The output paths are checked
    before any work: none may be an input, each needs a writable folder and an ending its writer takes."""
    inputs = [scan, lung_file, *checkpoints]
    output_path = check_output_file(output, inputs, what="mask")
    if report:
        check_output_file(report, [*inputs, output], (".json",), "report")
        check_output_file(Path(report).with_suffix(".png"), [*inputs, output], (".png",), "report's picture")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("loading the checkpoints", total=STEPS)

        def step(description: str) -> None:
            progress.update(task, advance=1, description=description)

        model, method = load_model(checkpoints, overrides, device)
        step(f"reading {scan}")
        image = read_ct(scan, series=series)
        step("lung mask")
        supplied = read_mask(lung_file, image, "lung mask") if lung_file else None
        lung = lung_mask(image, model.cfg.lung_mask, supplied, source=scan)
        step(f"{method.name} on its grid ({' x '.join(f'{s:g}' for s in model.cfg.preprocessing.spacing)} mm)")
        lesion = predict_scan(model, image, lung, device)
        step(f"writing {output_path.name}")
        numbers = infection_report(scan, lesion, lung)
        outputs = [output_path] + ([Path(report), Path(report).with_suffix(".png")] if report else [])
        with all_or_none(outputs) as done:
            done(write_image(lesion, output_path))
            if report:
                done(write_text(report, json.dumps({**numbers, "method": method.name, "checkpoints": checkpoints},
                                                   indent=1)))
                done(report_figure(image, lesion, lung, Path(report).with_suffix(".png"),
                                   f"{Path(scan).name}: {method.name}, {numbers['lesion_volume_ml']:.1f} mL "
                                   f"lesion, {numbers['percentage_of_infection']:.2f}% of the lung"))
        step("done")
    print(f"lesion mask: {output_path} ({numbers['lesion_volume_ml']:.1f} mL lesion in "
          f"{numbers['lung_volume_ml']:.1f} mL lung, {numbers['percentage_of_infection']:.2f}%)")
    if report:
        print(f"report: {report}, {Path(report).with_suffix('.png')}")
    return numbers
