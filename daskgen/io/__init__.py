"""Reading inputs as blocks of rows, and writing daskgen's stores.

Reading: :mod:`.inputs` (expand inputs, plan blocks, ``read_block``), :mod:`.blocks`
(a block and its format's options), one module per format (:mod:`.csv_input`,
:mod:`.parquet_input`, :mod:`.zarr_input`, :mod:`.arrays` for in-memory and lazy
arrays) and :mod:`.tables` (Arrow tables to checked rows). Writing: :mod:`.store`
(the model store, through the model registry) and :mod:`.publish` (write, then
rename). Shared: :mod:`.fs` (paths, fsspec URLs, Zarr groups) and :mod:`.labels`.
"""
