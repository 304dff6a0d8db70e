"""The model combo box: catalogue models (installed or not), the embedded demo models, custom folders.

Example:
    >>> from SpinalCordSegLib.panel.model_selector import ModelEntry, ModelSelectorState
    >>> selector = ModelSelectorState([ModelEntry("demo-sc", "Demo cord", True, builtin=True)])
    >>> [item.label for item in selector.items()]
    ['Demo cord (demo, built in)', 'Custom nnU-Net folder...']
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

CUSTOM_FOLDER = "custom-folder"


@dataclass(frozen=True)
class ModelEntry:
    """A model the selector offers.

    Attributes:
        id: what ``model_store.resolve_model`` takes (catalogue id, installed id or folder).
        name: what the user reads.
        installed: ready without a download.
        builtin: an embedded demo model shipped with the module.
        current: the round's model (``round promote``'s last release): the default.
    """

    id: str
    name: str
    installed: bool
    builtin: bool = False
    current: bool = False


@dataclass(frozen=True)
class ModelItem:
    """One line of the model combo box."""

    key: str
    label: str
    enabled: bool
    tooltip: str


class ModelSelectorState:
    """The model combo box: entries, custom folders, then "Custom nnU-Net folder...".

    Args:
        entries: catalogue and installed models (see :func:`catalogue_model_entries`).
        custom_folders: nnU-Net folders the user picked before (kept in the scene).
    """

    def __init__(self, entries: Sequence[ModelEntry], custom_folders: Sequence[str] = ()) -> None:
        self.entries = list(entries)
        self.custom_folders: List[str] = []
        for folder in custom_folders:
            self.add_custom_folder(folder)

    def add_custom_folder(self, folder: str) -> str:
        """Remember a folder the user picked; return its key."""
        folder = str(folder)
        if folder not in self.custom_folders:
            self.custom_folders.append(folder)
        return folder

    def items(self) -> List[ModelItem]:
        """Lines of the combo box, in order."""
        items = []
        for entry in self.entries:
            if entry.builtin:
                label = f"{entry.name} (demo, built in)"
                tooltip = "Embedded demo model" if entry.installed else "Not part of this build"
            elif entry.installed:
                label, tooltip = entry.name, f"Installed model '{entry.id}'"
            else:
                label = f"{entry.name} (not installed)"
                tooltip = f"Downloaded and installed on first use ('{entry.id}')"
            if entry.current:
                label, tooltip = f"{label} (round's model)", f"{tooltip}; released by 'round promote'"
            items.append(ModelItem(entry.id, label, entry.installed or not entry.builtin, tooltip))
        for folder in self.custom_folders:
            items.append(ModelItem(folder, f"Folder: {Path(folder).name}", True, folder))
        items.append(ModelItem(CUSTOM_FOLDER, "Custom nnU-Net folder...", True,
                               "Pick an nnU-Net v2 results folder (dataset.json, plans.json, fold_*)"))
        return items

    def default_key(self) -> Optional[str]:
        """The round's model if any, else the first usable model: an installed one if any, else the first entry."""
        usable = [item for item in self.items() if item.enabled and item.key != CUSTOM_FOLDER]
        current = next((e.id for e in self.entries if e.current and e.installed), None)
        if current is not None:
            return current
        installed = {e.id for e in self.entries if e.installed}
        first_installed = next((item.key for item in usable if item.key in installed), None)
        return first_installed or (usable[0].key if usable else None)

    @staticmethod
    def is_custom_choice(key: str) -> bool:
        """True for the "Custom nnU-Net folder..." item (ask for a folder)."""
        return key == CUSTOM_FOLDER


def catalogue_model_entries(catalogue: Iterable, installed: Iterable = (),
                            current: Optional[str] = None) -> List[ModelEntry]:
    """Entries for every catalogue model, then every installed model the catalogue does not know.

    ``current`` is the id of the round's model (``ModelStore.current()``), marked as such.

    ``catalogue`` is a :class:`SpinalCordSegLib.models.catalogue.Catalogue`;
    ``installed`` holds ``model_store.InstalledModel`` objects (``ModelStore().installed()``).
    """
    installed = {model.id: model for model in installed}
    entries = []
    for entry in catalogue:
        if entry.runner:  # another package's model (TotalSpineSeg): not a segmentation the panel applies
            continue
        if entry.builtin:
            entries.append(ModelEntry(entry.id, entry.name, entry.path is not None and entry.path.is_dir(), True))
        else:
            entries.append(ModelEntry(entry.id, entry.name, entry.id in installed))
    known = {entry.id for entry in entries}
    entries += [ModelEntry(i, model.record.get("name") or i, True) for i, model in installed.items() if i not in known]
    return [replace(entry, current=True) if entry.id == current else entry for entry in entries]
