"""DICOM ingestion: the ingest stage, run by `workflow/rules/ingest.smk`.

Rules there: `index_dicom` (`mmfusion index`), `convert_patient` (`mmfusion convert`) and
`summarise_conversion` (`mmfusion qc convert-summary`, over the convert status files).

Modules:
    index           orchestration: crawl a DICOM root into index rows, patient list
    headers         crawl the folder tree, read each file's header (in parallel)
    series_geometry one image series as grouped by the index, its geometry checks and extent
    linking         link each RTSTRUCT to a CT series (series UID, else FoR + geometry)
    problems        `Problem` codes recorded beside every index problem message
    index_io        the index TSV: columns, write_index, read_index
    inputs          per patient: select the CT series and RTSTRUCT from the index rows
    convert         per patient: write NIfTI volumes/masks and rois.json
    relpaths        input paths in outputs made relative to the DICOM root
    series          load and check a CT series (slice sorting, spacing policy) -> volume
    rtstruct        parse an RTSTRUCT: ROIs and contours in mm
    rasterize       contours -> voxel masks on the CT grid (even-odd rule)
    rois            ROI name matching and the GTV-N label map
"""
