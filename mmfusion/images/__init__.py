"""The manifest route: CT volumes and masks that are not DICOM-RT.

A manifest (CSV/TSV, one row per patient) names each patient's CT (NIfTI, NRRD, MetaImage or
a DICOM series folder) and masks (label maps, 3D Slicer `.seg.nrrd`, DICOM-SEG). Modules:

    manifest   read and check the manifest; its index (`manifest_index.tsv`)
    volumes    read a CT volume; intensity plausibility
    masks      read masks (label values, named segments) and put them on the CT grid
    convert    per patient: the same outputs as the DICOM route's conversion
"""
