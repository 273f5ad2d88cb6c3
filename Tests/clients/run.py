"""Runs every *_test.py here with unittest and ends with "clients: N passed, N failed, N skipped".
A skipped test class prints its reason in a banner: a missing browser or package must be seen, not missed."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

suite = unittest.defaultTestLoader.discover(HERE, pattern=sys.argv[1] if len(sys.argv) > 1 else "*_test.py")
result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
skipped = len(result.skipped)
passed = result.testsRun - failed - skipped
if skipped:
    reasons = sorted({reason for _, reason in result.skipped})
    print("!" * 78)
    print(f"!!! {skipped} client test(s) SKIPPED, not run:")
    for r in reasons:
        print(f"!!!   {r}")
    print("!!! install them with scripts/install-client-deps")
    print("!" * 78)
print(f"clients: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or result.testsRun == 0 else 0)
