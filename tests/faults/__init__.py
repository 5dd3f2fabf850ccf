"""The fault-injection suite: development tooling of this repository, not part of the installed
package (it needs moto, s3fs and `unshare`, which sact does not depend on).

    python -m tests.faults.reliability --repeat 2 --out docs/RELIABILITY.md

runs every scenario from the repository's root; the quick part runs in the test suite.
"""
