"""Test data for sact's tests and benchmarks, importable wherever sact is installed (like
``zarr.testing``): nothing here is needed to extract, train or evaluate.

    sact.testing.stores      synthetic feature stores with class structure, and their split lists
    sact.testing.videos      small synthetic videos, a frame folder, broken files (PyAV)
    sact.testing.clips       benchmark clips in SSv2's and Kinetics' formats, sized like theirs
    sact.testing.extraction  the one tiny extraction config, in-process or as `sact extract` options
    sact.testing.format1     a store in format 1, written with plain zarr as format 1 was
    sact.testing.damage      one flipped byte in a stored chunk

Separate modules so each import pays only for what it uses: a store benchmark needs neither PyAV
nor torch, and processes that import the tests afresh (claim racers) stay light. The
fault-injection suite is not here: it is the repository's own tooling (tests/faults/).
"""
