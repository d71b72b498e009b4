"""The `external` config section: a second cohort scored by the trained bundles."""

from __future__ import annotations

from dataclasses import dataclass

from mmfusion.model.variants import BASELINES, VARIANTS
from mmfusion.settings import check_choice, schema_defaults


@dataclass(frozen=True)
@schema_defaults("external")
class ExternalSettings:
    """External validation (config section `external`; defaults: the schema).

    Attributes:
        dicom_root: the second cohort's DICOM folder ("" = no external validation).
        clinical: its clinical table (with the label column for a report).
        hematology: its hematology table ("" = none).
        variants: the bundles (trained variants) that score it.
    """

    dicom_root: str
    clinical: str
    hematology: str
    variants: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        for variant in self.variants:
            check_choice("external.variants", variant, [*VARIANTS, *BASELINES])

    @property
    def enabled(self) -> bool:
        return bool(self.dicom_root)
