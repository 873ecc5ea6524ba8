import os
import stat

from semiseg_fast.utils.atomic import atomic_open


def test_written_files_get_the_mode_open_would_give(tmp_path):
    with open(tmp_path / "plain", "w") as f:
        f.write("x")
    with atomic_open(str(tmp_path / "atomic"), "w") as f:
        f.write("x")
    mode = lambda name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)
    assert mode("atomic") == mode("plain")  # not mkstemp's 0600
