"""No patient identifiers in outputs (issue 11): a cohort whose every DICOM file carries
distinctive fake PHI, in folders named after the patients, runs through the whole workflow
and the Snakemake HTML report; then every file under `results/` is searched for the PHI.

Searched: the raw bytes of every file, and what they contain: gzip members (NIfTI), zip
members (`.npz`, torch checkpoints), PNG text chunks (zTXt / iTXt decompressed) and the
`data:` URIs the HTML report embeds (base64 decoded), recursively. Nothing may hold a
name (any part of it, any letter case), a birth date (YYYYMMDD or YYYY-MM-DD), the
institution, address, physician, operator or description strings, or the absolute path
of the archive (`cohort.dicom_root`).

Two allowances, both narrow:
- `dicom_index.tsv` (the map of the archive) lists the archive's files relative to the
  root in its `files` column, and folder names may hold names: there, and only there.
- The run's configuration record (`config.resolved.yaml`, copied into the report) holds
  `dicom_root: <the path>` because the user wrote it: that one key/value form is allowed.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import gzip
import io
import json
import re
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from mmfusion.synth import SynthSettings, generate_cohort
from tests.conftest import REPO
from tests.test_workflow import TINY_SYNTH, _snakemake

FAMILY = ["Quixtrom", "Zorbelline", "Vashquorin", "Plimbergast", "Drezzelwick", "Yoxannery",
          "Kwelmstadt", "Brunthaxel", "Ostrevaine", "Gulvarrow", "Thrimbolde", "Escavorth"]
GIVEN = ["Amalberta", "Phinedora", "Welkmund", "Ysoltrude", "Garbrecht", "Ottiliana",
         "Quenrick", "Saffirelle", "Hubertoon", "Marvolene", "Crispinax", "Leontyna"]
INSTITUTION = "Krellworth Oncology Institute"
PHYSICIAN = "Vantibble^Oswinna^^Dr"
OPERATOR = "Pembrastow^Ulrikke"
ADDRESS = "17 Glimmerdorn Lane, Quarvik"
STUDY_DESCRIPTION = "CT thorax Hollowmere protocol"
SERIES_DESCRIPTION = "Snorquendal planning"
# distinctive words of the header strings above; any of them in an output is a leak
HEADER_WORDS = ["Krellworth", "Vantibble", "Oswinna", "Pembrastow", "Ulrikke", "Glimmerdorn",
                "Quarvik", "Hollowmere", "Snorquendal", "Maidenfarrow"]


def birth_date(i: int) -> str:
    return f"19{31 + i:02d}{1 + i % 12:02d}{3 + 2 * i:02d}"


def patient_phi(i: int) -> dict[str, str]:
    return {"PatientName": f"{FAMILY[i]}^{GIVEN[i]}",
            "OtherPatientNames": f"Maidenfarrow^{GIVEN[i]}",
            "PatientBirthDate": birth_date(i),
            "InstitutionName": INSTITUTION, "ReferringPhysicianName": PHYSICIAN,
            "OperatorsName": OPERATOR, "PatientAddress": ADDRESS,
            "StudyDescription": STUDY_DESCRIPTION, "SeriesDescription": SERIES_DESCRIPTION}


WIDE = ("utf-16-le", "utf-32-le")  # numpy stores str arrays as UTF-32


def _alternatives(texts: list[str]) -> list[bytes]:
    return [re.escape(t.encode(enc)) for t in texts for enc in ("utf-8", *WIDE)]


def forbidden_patterns(n: int) -> re.Pattern[bytes]:
    """What no output may contain: one regex over bytes (case-insensitive), each string
    also in UTF-16 and UTF-32."""
    words = [*FAMILY[:n], *GIVEN[:n], *HEADER_WORDS, INSTITUTION]
    words += [f"{FAMILY[i]}{sep}{GIVEN[i]}" for i in range(n) for sep in "^ _"]
    words += [PHYSICIAN.replace("^", sep) for sep in "^ _"]
    dates = [form for i in range(n) for b in [birth_date(i)]
             for form in (b, f"{b[:4]}-{b[4:6]}-{b[6:]}")]
    alts = sorted(_alternatives(words), key=len, reverse=True)  # longest form first
    alts += [rb"(?<![0-9])" + re.escape(d.encode()) + rb"(?![0-9])" for d in dates]
    alts += [re.escape(d.encode(enc)) for d in dates for enc in WIDE]
    return re.compile(b"|".join(alts), re.IGNORECASE)


# --------------------------------------------------------------------------- the scanner

_PNG = b"\x89PNG\r\n\x1a\n"
_DATA_URI = re.compile(rb"data:[\w/+.-]*(?:;[\w=.-]+)*?(;base64)?,([A-Za-z0-9+/=%_-]+)")


def _png_texts(data: bytes) -> Iterator[bytes]:
    """The text of every tEXt / zTXt / iTXt chunk (decompressed)."""
    pos = len(_PNG)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            yield body
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            yield key + b" " + zlib.decompress(rest[1:])
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            lang, _, rest = rest.partition(b"\0")
            tkey, _, text = rest.partition(b"\0")
            yield b" ".join([key, lang, tkey, zlib.decompress(text) if compressed else text])


def contents(name: str, data: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """`data` and, recursively, everything packed in it, as (where, bytes)."""
    yield name, data
    unescaped = data.replace(b"\\/", b"/").replace(b"\\u002F", b"/")
    if unescaped != data:  # JSON may escape the slashes of a path
        yield name + " (unescaped)", unescaped
    if depth > 5:
        return
    if data[:3] == b"\x1f\x8b\x08":  # gzip (deflate); raw bytes such as a tensor's may
        # start with 1f 8b by chance: those are scanned as they are (above)
        yield from contents(name + "!gunzip", gzip.decompress(data), depth + 1)
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for member in zf.namelist():
                yield name + "!" + member, member.encode()
                yield from contents(name + "!" + member, zf.read(member), depth + 1)
    if data[:6] == b"\x93NUMPY":  # an array of text: as UTF-8 (numpy stores UTF-32)
        with contextlib.suppress(ValueError):
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if arr.dtype.kind in "US":
                yield name + "!text", "\n".join(map(str, arr.ravel())).encode()
    if data[:8] == _PNG:
        for k, text in enumerate(_png_texts(data)):
            yield from contents(f"{name}!text{k}", text, depth + 1)
    if b"data:" in data:
        for k, m in enumerate(_DATA_URI.finditer(data)):
            payload = m.group(2)
            try:
                inner = base64.b64decode(payload + b"=" * (-len(payload) % 4)) \
                    if m.group(1) else _unquote(payload)
            except ValueError:
                continue
            yield from contents(f"{name}!data{k}", inner, depth + 1)


def _unquote(payload: bytes) -> bytes:
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(payload)


def _readable(hit: bytes) -> bytes:
    return hit.replace(b"\0", b"")  # a UTF-16/32 hit without its zero bytes


def find_leaks(path: Path, data: bytes, patterns: re.Pattern[bytes],
               roots: list[str]) -> list[str]:
    """`where: what` for every forbidden string in `data` and what it packs."""
    allowed_root = [re.compile(rb"dicom_root:\s*['\"]?" + re.escape(r.encode()))
                    for r in roots]
    root_pattern = re.compile(b"|".join(_alternatives(roots)))
    leaks = []
    for where, blob in contents(str(path), data):
        hits = {m.group(0) for m in patterns.finditer(blob)}
        leaks += [f"{where}: {_readable(hit)!r}" for hit in sorted(hits)]
        for allowed in allowed_root:
            blob = allowed.sub(b"dicom_root: <allowed>", blob)
        if root_pattern.search(blob):
            leaks.append(f"{where}: the archive's absolute path")
    return leaks


def index_without_files(path: Path, roots: list[str]) -> tuple[bytes, list[str]]:
    """The index TSV with its `files` cells emptied, and the problems of those cells
    (absolute, outside the root, or naming the root)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    col = rows[0].index("files")
    problems = []
    for row in rows[1:]:
        for f in json.loads(row[col] or "[]"):
            if f.startswith("/") or ".." in Path(f).parts or any(r in f for r in roots):
                problems.append(f"{path}: files entry {f!r} is not relative to the root")
        row[col] = ""
    return "\n".join("\t".join(r) for r in rows).encode(), problems


def scan_results(results: Path, n: int, roots: list[str]) -> tuple[int, list[str]]:
    """(files scanned, leaks) over every file under `results`."""
    patterns = forbidden_patterns(n)
    leaks: list[str] = []
    scanned = 0
    for path in sorted(results.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path == results / "dicom_index.tsv":
            data, problems = index_without_files(path, roots)
            leaks += problems
        leaks += find_leaks(path, data, patterns, roots)
        scanned += 1
    return scanned, leaks


def _npz_text(text: str) -> bytes:
    out = io.BytesIO()
    np.savez(out, meta=np.array(text))
    return out.getvalue()


def test_the_scanner_finds_phi_in_every_container(tmp_path: Path) -> None:
    """The scanner itself: PHI hidden in gzip, zip, PNG zTXt/iTXt, a base64 data URI, a
    numpy text array (UTF-32), UTF-16 text, JSON-escaped slashes."""
    patterns = forbidden_patterns(1)
    name = b"quixtrom amalberta"
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.npy", b"..." + name)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    png = _PNG + chunk(b"zTXt", b"Comment\0\0" + zlib.compress(name)) + chunk(b"IEND", b"")
    itxt = _PNG + chunk(b"iTXt", b"Comment\0\1\0en\0\0" + zlib.compress(b"x 1931-01-03"))
    html = b'<img src="data:image/png;base64,' + base64.b64encode(png) + b'">'
    root = str(tmp_path / "site archive" / "dicom")
    cases = {"a.nii.gz": gzip.compress(b"\0" * 348 + name), "b.npz": packed.getvalue(),
             "c.png": png, "d.png": itxt, "e.html": html, "f.txt": birth_date(0).encode(),
             "g.json": root.replace("/", "\\/").encode(), "h.log": b"Vantibble Oswinna",
             "i.npz": _npz_text('{"rt": "Quixtrom_Amalberta_ESO-0001/RS.dcm"}'),
             "j.npz": _npz_text(root), "k.txt": "Amalberta".encode("utf-16-le")}
    for fname, data in cases.items():
        assert find_leaks(tmp_path / fname, data, patterns, [root]), fname
    clean = f"dicom_root: '{root}'\nresults: x\n{birth_date(0)}123".encode()
    assert not find_leaks(tmp_path / "config.resolved.yaml", clean, patterns, [root])


def test_messages_name_files_relative_to_the_root(tmp_path: Path) -> None:
    """A refusal and a warning name their file relative to the DICOM root, never by its
    absolute path (they reach convert_status.json, rois.json, the QC tables and logs)."""
    from mmfusion.cli import main
    from mmfusion.dicom.relpaths import relative_error, relative_text
    from mmfusion.errors import DicomError
    from tests.dicom_fixtures import CTGrid, sphere_contours, write_ct, write_rtstruct

    root = tmp_path / "site archive"
    assert relative_text(f"slices in {root}: {root}/a/b.dcm, {root}", root) == \
        "slices in .: a/b.dcm, ."
    err = relative_error(DicomError("bad", path=f"{root}/a.dcm"), root)
    assert err.path == "a.dcm" and str(err) == "[file a.dcm] bad"
    for pid, change in (("P1", "duplicate"), ("P2", "gap")):
        grid = CTGrid(patient_id=pid, shape=(8, 16, 16))
        folder = root / f"{FAMILY[0]}_{GIVEN[0]}_{pid}"
        files = write_ct(folder / "ct", grid)
        write_rtstruct(folder / "rs.dcm", grid,
                       {"GTV-T": sphere_contours(grid, (8.0, 8.0), 3.5, 4.0)})
        if change == "duplicate":  # an identical copy: dropped with a warning
            shutil.copy(files[3], folder / "ct" / "copy.dcm")
        else:  # a missing slice: the patient is excluded
            files[4].unlink()
    index = tmp_path / "results" / "dicom_index.tsv"
    assert main(["index", str(root), "--out", str(index), "--no-progress"]) == 0
    texts = []
    for pid in ("P1", "P2"):
        out = tmp_path / "results" / pid
        assert main(["convert", "--index", str(index), "--patient", pid, "--out", str(out),
                     "--dicom-root", str(root), "--status-out",
                     str(out / "convert_status.json")]) == 0
        texts += [p.read_text() for p in out.glob("*.json")]
    ok, excluded = texts[:-1], texts[-1]
    assert f"{FAMILY[0]}_{GIVEN[0]}_P1/ct/" in "".join(ok)  # the duplicate, named
    assert f"file {FAMILY[0]}_{GIVEN[0]}_P2/ct]" in excluded  # the gap's series folder
    assert all(str(tmp_path) not in t for t in texts)


# --------------------------------------------------------------------------- the cohort

def make_phi_archive(tmp: Path) -> dict[str, Path]:
    """A synthetic cohort with fake PHI in every header and in the folder names."""
    export = tmp / "export"
    generate_cohort(export, SynthSettings(**TINY_SYNTH), jobs=1, progress=False)
    archive = tmp / "site archive" / "dicom"
    archive.mkdir(parents=True)
    for i, folder in enumerate(sorted((export / "dicom").iterdir())):
        phi = patient_phi(i)
        target = archive / f"{phi['PatientName'].replace('^', '_')}_{folder.name}"
        shutil.copytree(folder, target)
        for path in sorted(target.rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            for key, value in phi.items():
                setattr(ds, key, value)
            ds.save_as(path)
    tables = tmp / "tables"
    tables.mkdir()
    for name in ("clinical.csv", "hematology.csv"):
        shutil.copy(export / name, tables / name)
    shutil.rmtree(export)
    return {"dicom_root": archive, "clinical": tables / "clinical.csv",
            "hematology": tables / "hematology.csv"}


@pytest.fixture(scope="module")
def phi_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run the workflow and the HTML report; returns (results, dicom_root)."""
    tmp = tmp_path_factory.mktemp("phi")
    inputs = make_phi_archive(tmp)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp / "results")
    config["cohort"] = {"synthetic": False, "id_column": "patient_id", "label_column": "lnm",
                        "positive_value": 1, **{k: str(v) for k, v in inputs.items()}}
    # tiny patches and networks (as tests/test_workflow_real_cohort.py): one deep variant
    # (checkpoints, feature maps) and one baseline (pickled models) cover what is written
    config["crop"].update(spacing=[4.0, 4.0, 5.0], tumour_size=[8, 16, 16],
                          node_sizes=[[4, 12, 12]] * 3)
    config["preprocess"].update(n_tumour=4, n_node=3)
    config["model"].update(variants=["mmfusion", "logreg"], depth=10, base_width=4,
                           mmrl_dim=8, hga_dim=8, hga_out=8, head_hidden=8,
                           diffusion_hidden=8, n_samples=4)
    config["train"].update(epochs=2, warmup_epochs=1, restart_epoch=2, batch_size=4)
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = _snakemake(["--cores", "2", "--configfile", str(cfg), "--nolock"])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]
    html = tmp / "results" / "report" / "report.html"
    res = _snakemake(["--configfile", str(cfg), "--nolock", "--report", str(html)])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]
    return tmp / "results", inputs["dicom_root"]


@pytest.mark.slow
def test_no_output_carries_patient_identifiers_or_the_archive_path(
        phi_run: tuple[Path, Path]) -> None:
    results, archive = phi_run
    n = TINY_SYNTH["n_patients"]
    # the inputs do carry the PHI, so finding none in the outputs means something
    first = next(archive.glob(f"{FAMILY[0]}_{GIVEN[0]}_*/CT/*.dcm"))
    assert str(pydicom.dcmread(first).PatientName) == f"{FAMILY[0]}^{GIVEN[0]}"
    index = (results / "dicom_index.tsv").read_text()
    assert all(FAMILY[i] in index for i in range(n))  # only in the files column (checked)
    assert (results / "report" / "report.html").stat().st_size > 10_000
    roots = sorted({str(archive), str(archive.resolve())})
    scanned, leaks = scan_results(results, n, roots)
    assert not leaks, f"{len(leaks)} leak(s):\n" + "\n".join(leaks[:40])
    kinds = {p.name for p in results.rglob("*") if p.is_file()}
    assert {"rois.json", "convert_status.json", "patches.npz", "qc.png", "ct.nii.gz",
            "radiomics_provenance.json", "report.html", "exclusions.tsv"} <= kinds
    assert any(p.suffix == ".pt" for p in results.rglob("*.pt"))
    assert scanned > 12 * 9
