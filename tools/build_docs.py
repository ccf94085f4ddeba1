"""Build the documentation site from the notebooks, offline (nbdev_docs needs Quarto, which cannot be installed here).

    python tools/build_docs.py            # writes site/ ; open site/index.html
    python tools/build_docs.py --serve    # and serves it on http://127.0.0.1:8000

Each notebook in nbs/ goes through nbdev's own processors (hidden cells and export directives removed,
`show_doc` rendered, front matter read), then Quarto's remaining cell options are honoured
(`include: false` drops a cell, `echo: false` hides its code) and stripped, and MkDocs Material with
mkdocs-jupyter renders the result, with navigation mirroring the notebooks and full-text search."""
import argparse, json, re, shutil, subprocess, sys, tempfile
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from nbdev.processors import FilterDefaults
from nbdev.process import NBProcessor, extract_directives, first_code_ln
from nbdev.config import get_config

ROOT = Path(__file__).resolve().parents[1]

def page_name(nb:Path)->str:
    "Page of notebook `nb`: its name without the number prefix, as nbdev names pages"
    return re.sub(r'^\d+[a-z]?_', '', nb.stem)

def _directives(c)->tuple:
    "Cell `c`'s directives as nbdev reads them (`{'include:': ['false'], ...}`) and its source without them"
    lines = c.source.splitlines(True)
    n = first_code_ln(lines)
    return extract_directives(c, remove=False), '' if n is None else ''.join(lines[n:])

def _off(d:dict, k:str)->bool: return (d.get(f'{k}:') or [''])[0].lower() == 'false'   # e.g. `#| echo: false`

def _links(text, host):
    "Links to the hosted docs and to notebooks become links between the site's pages; Quarto link attributes go"
    text = text.replace(host.rstrip('/') + '/', '')
    text = re.sub(r'\)\{target="_blank"[^}]*\}', ')', text)
    return re.sub(r'(?:\.\./)?nbs/(\d+[a-z]?_)?([\w-]+)\.ipynb', lambda m: f'{m.group(2)}.html', text)

def process(nb_path:Path, out_dir:Path, host:str)->tuple:
    "Write the docs version of one notebook; returns its page name and title"
    nb = read_nb(nb_path)
    # the notebooks are committed with their outputs (tools/execute_nbs.py): show_doc output is rendered already
    procs = [p for p in FilterDefaults().procs() if getattr(p, '__name__', '') not in ('exec_show_docs', 'add_show_docs')]
    NBProcessor(nb=nb, procs=procs).process()
    fm = getattr(nb, 'frontmatter_', {}) or {}
    title = fm.get('title', page_name(nb_path))
    cells = [dict(cell_type='markdown', metadata={}, source=f"# {title}\n\n" + (f"> {fm['description']}\n" if fm.get('description') else ''))]
    for c in nb.cells:
        if c.cell_type == 'raw': continue                     # front matter
        d, body = _directives(c)
        if _off(d, 'include'): continue
        if c.cell_type == 'markdown':
            if body.strip(): cells.append(dict(cell_type='markdown', metadata={}, source=_links(body, host)))
            continue
        outputs = []
        for o in c.get('outputs', []):
            o = {k: v for k, v in dict(o).items()}
            if 'data' in o and 'text/markdown' in o['data']:
                md = o['data']['text/markdown']
                o['data'] = {**o['data'], 'text/markdown': _links(md if isinstance(md, str) else ''.join(md), host)}
            outputs.append(o)
        meta = {'tags': ['remove_input']} if _off(d, 'echo') or not body.strip() else {}
        if not body.strip() and not outputs: continue
        cells.append(dict(cell_type='code', metadata=meta, source=body, outputs=outputs, execution_count=None))
    name = page_name(nb_path)
    out = dict(cells=cells, metadata={'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'},
                                      'language_info': {'name': 'python'}}, nbformat=4, nbformat_minor=5)
    (out_dir/f'{name}.ipynb').write_text(json.dumps(out, indent=1))
    return name, title

SECTIONS = (('Tutorials', 'tutorial_'),)

def build(site:Path=ROOT/'site')->Path:
    cfg = get_config()
    host = f"{cfg.doc_host}{cfg.doc_baseurl}"
    notebooks = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp)/'docs'; docs.mkdir()
        pages = [process(p, docs, host) for p in notebooks]
        home = [f'  - Home: index.ipynb']
        api = [f'    - {t}: {n}.ipynb' for n, t in pages if n not in ('index', 'results', 'architecture') and not n.startswith('tutorial_')]
        tut = [f'    - {t}: {n}.ipynb' for n, t in pages if n.startswith('tutorial_')]
        res = [f'  - {t}: {n}.ipynb' for n, t in pages if n in ('results', 'architecture')]
        nav = '\n'.join(home + res + ['  - Reference:'] + api + (['  - Tutorials:'] + tut if tut else []))
        extra = ROOT/'tools'/'docs_extra'
        if extra.exists(): shutil.copytree(extra, docs, dirs_exist_ok=True)
        (Path(tmp)/'mkdocs.yml').write_text(f"""site_name: {cfg.title}
site_description: {cfg.description}
docs_dir: docs
site_dir: {site}
use_directory_urls: false
theme:
  name: material
  features: [navigation.sections, navigation.expand, navigation.top, search.highlight, content.code.copy]
  palette: {{primary: indigo}}
plugins:
  - search
  - mkdocs-jupyter:
      execute: false
      include_source: false
      ignore_h1_titles: false
      remove_tag_config:
        remove_input_tags: [remove_input]
markdown_extensions: [tables, admonition, toc]
extra_css: [stylesheets/extra.css]
nav:
{nav}
""")
        r = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--clean', '-f', str(Path(tmp)/'mkdocs.yml')],
                           capture_output=True, text=True, cwd=tmp)      # mkdocs-jupyter caches in the working directory
        if r.returncode != 0: sys.exit(f"mkdocs failed:\n{r.stdout}\n{r.stderr}")
    _fix_anchors(site)
    return site

def _fix_anchors(site:Path):
    "nbdev links to `page.html#name` in lower case; point them at the heading ids the pages really have"
    norm = lambda s: re.sub(r'[^a-z0-9_]', '', s.lower())
    pages = {p.name: p.read_text() for p in site.glob('*.html')}
    ids = {n: {norm(i): i for i in re.findall(r' id="([^"]+)"', html)} for n, html in pages.items()}
    def fix(m, page):
        target, frag = m.group(1), m.group(2)
        known = ids.get(target or page, {})
        real = known.get(norm(frag)) or known.get(norm(frag.split('.')[-1]))   # `Class.method` headings
        return f'href="{target}#{real or frag}"'
    for n, html in pages.items():
        new = re.sub(r'href="([\w-]*\.html|)#([^"]+)"', lambda m: fix(m, n), html)
        if new != html: (site/n).write_text(new)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description='Build the docs site offline')
    p.add_argument('--site', type=Path, default=ROOT/'site')
    p.add_argument('--serve', action='store_true')
    a = p.parse_args()
    site = build(a.site.resolve())
    print(f'built {site}/index.html')
    if a.serve: subprocess.run([sys.executable, '-m', 'http.server', '8000', '--bind', '127.0.0.1', '--directory', str(site)])
