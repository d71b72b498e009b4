"""DICOM ingestion: the ingest stage, run by `workflow/rules/ingest.smk`.

Rules there: `index_dicom` (`mmfusion index`), `convert_patient` (`mmfusion convert`) and
`summarise_conversion` (`mmfusion qc convert-summary`, over the convert status files).

Modules:
    index           orchestration: crawl a DICOM root into index rows, patient list
    headers         crawl the folder tree, read each file's header (in parallel)
    series_geometry one image series as grouped by the index, its geometry checks and extent
    linking         link each RTSTRUCT / DICOM-SEG to a CT series (series UID, else FoR +
                    geometry)
    problems        `Problem` codes recorded beside every index problem message
    index_io        the index TSV: columns, write_index, read_index
    inputs          per patient: select the CT series and RTSTRUCT or DICOM-SEG (an RTSTRUCT
                    preferred) from the index rows
    convert         per patient: write NIfTI volumes/masks and rois.json
    relpaths        input paths in outputs made relative to the DICOM root
    series          load and check a CT series (slice sorting, spacing policy) -> volume
    rtstruct        parse an RTSTRUCT: ROIs and contours in mm
    rasterize       contours -> voxel masks on the CT grid (even-odd rule)
    seg             read a DICOM-SEG (highdicom): segments, each as a 0/1 image on its grid
    mask_grid       place a mask image on a CT grid (same lattice: exact; else nearest
                    neighbour with a warning; no overlap: refused)
    masks           convert's mask sources: RTSTRUCT ROIs or SEG segments, by name
    rois            ROI name matching and the GTV-N label map
"""
