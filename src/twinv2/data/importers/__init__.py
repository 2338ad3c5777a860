"""Log import: turn logs into a twinv2 dataset directory (`twinv2 import`).

- `import_kuairand(src_dir, out, layout="27k"|"1k", n_shards=4, overwrite=False)`: the KuaiRand files
  (rules in `twinv2.data.importers.kuairand`).
- `import_mapped(mapping, out, n_shards=4, overwrite=False, max_quarantine_share=None)`: any CSV/TSV/Parquet
  log (compressed or not) through a YAML column mapping (format in `twinv2.data.importers.mapping`).

Both validate every row (bad rows go to `quarantine.csv` with a reason), split valid rows into samples and
behaviours by an explicit rule recorded in the manifest, and account for every input row
(`rows_in = rows_stored + rows_quarantined + rows_unused` per file; see `twinv2.data.importers.core`). Validation
(exact ids, bounded chunks, whole-column and whole-file checks) is `twinv2.data.importers.validation`.
"""

from twinv2.data.importers.kuairand import import_kuairand
from twinv2.data.importers.mapping import import_mapped, load_mapping

__all__ = ["import_kuairand", "import_mapped", "load_mapping"]
