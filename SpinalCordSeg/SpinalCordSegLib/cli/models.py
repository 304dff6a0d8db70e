"""``spinalcordseg models``: list, install, inspect and remove models.

Example:
    $ spinalcordseg models list
    $ spinalcordseg models install lesion_sci_t2
    $ spinalcordseg models install lesion_sci_t2 --from model_SCIsegV2_r20240729.zip --offline
    $ spinalcordseg models install my-model --from results_folder_or.zip --trust
    $ spinalcordseg models info lesion_ms
    $ spinalcordseg models remove my-model
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import List, Sequence, Tuple

from ..imaging.fileutil import format_size
from ..errors import ModelInstallError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` command and its actions."""
    parser = subparsers.add_parser(
        "models", help="list, install, inspect and remove models",
        description="Manage nnU-Net models: the catalogue (Spinal Cord Toolbox releases) and your own.",
    )
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    actions.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir",
                        help="models folder (default: per-user folder, or $SPINALCORDSEG_HOME/models)")

    listing = actions.add_parser("list", parents=[common], help="catalogue and installed models")
    listing.set_defaults(func=run_list)

    install = actions.add_parser(
        "install", parents=[common], help="install a catalogue model, or your own from a zip or folder",
        description="Install a catalogue model (downloaded, or --from its release file(s)), or your own "
                    "nnU-Net results folder or zip (--from; ID names it, default: the file name).",
    )
    install.add_argument("model_id", nargs="?", metavar="ID", help="catalogue id, or the id for your own model")
    install.add_argument("--from", dest="sources", nargs="+", metavar="ZIP_OR_DIR",
                         help="install from local file(s) or a folder instead of downloading")
    install.add_argument("--trust", action="store_true",
                         help="trust this model folder now (checkpoints are pickled code) and remember the decision")
    install.add_argument("--force", action="store_true", help="reinstall, replacing the installed copy")
    install.add_argument("--offline", action="store_true", default=None, help="never touch the network")
    install.set_defaults(func=run_install)

    info = actions.add_parser("info", parents=[common], help="details of a catalogue or installed model")
    info.add_argument("model_id", metavar="ID")
    info.set_defaults(func=run_info)

    remove = actions.add_parser("remove", parents=[common], help="delete an installed model")
    remove.add_argument("model_id", metavar="ID")
    remove.set_defaults(func=run_remove)


def _store(args: argparse.Namespace):
    from ..models.model_store import ModelStore

    return ModelStore(models_dir=args.models_dir, offline=getattr(args, "offline", None))


def _table(rows: Sequence[Tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]) for row in rows
    )


def run_list(args: argparse.Namespace) -> int:
    """One table of every model: the catalogue's, then the user's; trust from the sha256 of the files now."""
    store = _store(args)
    installed = {model.id: model for model in store.installed()}
    rows = [("ID", "NAME", "SIZE", "TRUST", "SOURCE")]
    notes = []
    for entry in store.catalogue:
        model = installed.pop(entry.id, None)
        if entry.runner:
            available = importlib.util.find_spec(entry.runner) is not None
            rows.append((entry.id, entry.name, "-", "-", f"{entry.runner} package "
                         + ("installed" if available else f"not installed (pip install {entry.runner})")))
        elif entry.builtin and entry.path.is_dir():
            size = sum(f.stat().st_size for f in entry.path.rglob("*") if f.is_file())
            rows.append(_row(notes, entry.id, entry.name, size, store.trust_state_of_folder(entry.path, entry),
                             "built-in"))
        elif entry.builtin:
            rows.append((entry.id, entry.name, "-", "-", "built-in, missing from this build"))
        elif model is not None:
            rows.append(_row(notes, model.id, entry.name, model.size_bytes(), store.trust_status(model), model.source))
        else:
            trust = "pinned" if entry.assets_pinned else "asked on first use"
            rows.append((entry.id, entry.name, format_size(entry.download_size), trust,
                         f"not installed: catalogue {entry.version or 'release'}"))
    rows += [_row(notes, model.id, model.record.get("name") or model.id, model.size_bytes(), store.trust_status(model),
                  model.source) for model in installed.values()]
    print(_table(rows))
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\nModels folder: {store.models_dir}")
    return 0


def _row(notes: List[str], model_id: str, name: str, size: int, state, source: str) -> Tuple[str, ...]:
    """A table row; the details of a changed or unusable model go to ``notes``, printed below the table."""
    if state.changes or state.problem:
        notes.append(f"{model_id}: {state}")
    return (model_id, name, format_size(size), state.status if state.problem else state.summary, source)


def run_install(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.model_id and store.catalogue.get(args.model_id) is not None:
        already = store.get_installed(args.model_id) is not None and not args.force
        model = store.install(args.model_id, files=args.sources, force=args.force)
        if already:
            print(f"{model.id}: already installed in {model.path} (--force reinstalls)")
    elif args.model_id and not args.sources and store.get_installed(args.model_id) is not None:
        model = store.get_installed(args.model_id)  # your own model, installed earlier: '--trust' trusts it now
        print(f"{model.id}: already installed in {model.path} (--from ZIP_OR_DIR --force reinstalls)")
    elif args.sources:
        if len(args.sources) != 1:
            raise ModelInstallError("--from takes one zip or folder for a model outside the catalogue")
        model = store.install_from(args.sources[0], args.model_id, force=args.force)
    else:
        raise ModelInstallError(
            f"{args.model_id!r} is not a catalogue id (see 'spinalcordseg models list'); to install your "
            "own model, give --from ZIP_OR_DIR" if args.model_id else "give a catalogue id or --from ZIP_OR_DIR"
        )
    print(f"{model.id}: {format_size(model.size_bytes())} in {model.path} ({model.source})")
    if args.trust:
        resolved = store.resolve(model.id, trust=True)
        print(f"{model.id}: trusted ({resolved.trusted_because})")
    elif not store.trust_status(model).trusted:
        print(f"{model.id}: its files are not trusted yet; you will be asked before first use "
              f"(or run 'spinalcordseg models install {model.id} --trust')")
    return 0


def _info_lines(store, model_id: str) -> List[str]:
    entry = store.catalogue.get(model_id)
    model = store.get_installed(model_id)
    if entry is None and model is None:
        raise ModelInstallError(f"unknown model {model_id!r}: not in the catalogue nor in {store.models_dir}")
    lines = []
    if entry is not None:
        lines += [
            f"id: {entry.id}", f"name: {entry.name}", f"description: {entry.description}", f"task: {entry.task}",
            f"structures: {', '.join(entry.structures)}", f"contrasts: {', '.join(entry.contrasts)}",
            f"orientation: {entry.orientation or 'as the scan'}",
            f"cropped input: {'yes' if entry.cropped_input else 'no'}"
            + (f", crop with '{entry.crop_with}'" if entry.crop_with else ""),
        ]
        lines += [f"crop note: {entry.crop_note}"] if entry.crop_note else []
        lines += [f"version: {entry.version or 'unknown'}", f"folds: {', '.join(entry.folds or ['as released'])}"]
        for asset in entry.assets:
            lines += [f"file: {asset.name} ({format_size(asset.size)}), sha256: {asset.sha256 or 'unknown'}"]
            lines += [f"  url: {url}" for url in asset.urls]
        if entry.builtin:
            lines += [f"built-in folder: {entry.path}"]
        if entry.runner:
            lines += [f"runs through: {entry.runner_note}"]
        lines += [f"citation: {entry.citation or 'none given'}", f"licence: {entry.licence or 'unknown'}",
                  f"homepage: {entry.homepage or 'none'}", f"SCT model: {entry.sct_model or 'none'}"]
    if entry is not None and entry.builtin and entry.path.is_dir():
        return lines + _trust_lines(store.trust_state_of_folder(entry.path, entry))
    if model is None:
        return lines + ["installed: no" if entry is None or not entry.builtin else "installed: built in"]
    lines += [f"installed: {model.path} ({format_size(model.size_bytes())})", f"source: {model.source}",
              f"installed at: {model.record.get('installed_at', 'unknown')}"]
    lineage = model.record.get("lineage") if model.record.get("source") == "trained" else None
    if isinstance(lineage, dict):
        promotion = lineage.get("promotion") or {}
        lines += [f"lineage: parent {lineage.get('parent')}, round {lineage.get('round')}, "
                  f"{len(lineage.get('cases') or {})} case(s) (dataset sha256 {lineage.get('dataset_sha256')}), "
                  f"{lineage.get('trainer')}, device {lineage.get('device')}, trained at {lineage.get('trained_at')} "
                  f"in {lineage.get('training_seconds')} s, validation Dice {lineage.get('validation_dice')}",
                  "promotion: " + ("none yet" if not promotion else
                                   f"{'passed' if promotion.get('passed') else 'failed'} against "
                                   f"{promotion.get('against')}" + (" (forced)" if promotion.get("forced") else ""))]
    return lines + _trust_lines(store.trust_status(model))


def _trust_lines(state) -> List[str]:
    """The trust state and the sha256 of each file now, marking those that changed."""
    lines = [f"trust: {state}"]
    for name, digest in state.files.items():
        lines += [f"sha256 {name}: {digest}" + (" (CHANGED)" if name in state.changes else "")]
    return lines


def run_info(args: argparse.Namespace) -> int:
    print("\n".join(_info_lines(_store(args), args.model_id)))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    store = _store(args)
    model = store.get_installed(args.model_id)
    size = format_size(model.size_bytes()) if model is not None else None
    store.remove(args.model_id)
    print(f"{args.model_id}: removed from {store.models_dir} ({size})")
    return 0
