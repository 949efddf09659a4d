"""Runs a command and writes its peak RSS in bytes to a file: `maxrss.py OUT CMD...`.

Linux keeps a process's peak RSS across exec, so a child forked from a large parent reports at
least the parent's size. Started with `python -S` this program is small (about 10 MB), so the
figure it writes is the command's own. The command's exit code is passed on.
"""

import os
import sys

out, argv = sys.argv[1], sys.argv[2:]
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as fh:
    fh.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
