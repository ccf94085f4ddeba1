"""The kernels' C++ sources ship in the package, each file includes the shared header, and the bindings expose exactly the
kernels' names: cheap checks on the files, no compiling (test_compute.py runs the kernels)."""
import fnmatch, re
import pytest
from pathlib import Path
import fastsparse
from fastsparse import compute

CSRC = Path(fastsparse.__file__).parent/'csrc'
ROOT = Path(__file__).resolve().parents[1]

def test_sources_are_in_the_package():
    assert [p.parent for p in compute.KERNEL_SOURCES] == [CSRC] * len(compute.KERNEL_SOURCES)
    assert all(p.is_file() for p in compute.KERNEL_SOURCES)
    # every file there is built and hashed (a file left out would not rebuild the kernels when it changes); no Python, so
    # nbdev_export leaves the folder alone and setuptools does not take it for a package
    assert sorted(p.name for p in CSRC.iterdir() if p.name != '__pycache__') == sorted(p.name for p in compute.KERNEL_SOURCES)
    assert {p.suffix for p in compute.KERNEL_SOURCES} == {'.h', '.cpp'}

def test_each_cpp_includes_the_shared_header():
    cpps = [p for p in compute.KERNEL_SOURCES if p.suffix == '.cpp']
    assert len(cpps) >= 4
    for p in cpps: assert re.search(r'^#include "fastsparse\.h"$', p.read_text(), re.M), p.name

def test_bindings_expose_the_kernel_names():
    names = re.findall(r'm\.def\("(\w+)"', (CSRC/'bindings.cpp').read_text())
    assert sorted(names) == sorted(compute._KERNEL_NAMES) and len(set(names)) == len(names)
    header = (CSRC/'fastsparse.h').read_text()
    for n in compute._KERNEL_NAMES: assert re.search(rf'^\S.* {n}\(', header, re.M), f'fastsparse.h does not declare {n}'

def test_package_data_covers_the_sources():
    setup = ROOT/'setup.py'
    if not setup.exists(): pytest.skip('an installed copy, without setup.py')
    globs = re.search(r"package_data=\{'fastsparse': \[([^\]]*)\]", setup.read_text()).group(1)
    globs = re.findall(r"'([^']+)'", globs)
    for p in compute.KERNEL_SOURCES: assert any(fnmatch.fnmatch(f'csrc/{p.name}', g) for g in globs), p.name
