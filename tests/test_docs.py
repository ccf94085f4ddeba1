"The docs site, built offline from the notebooks and checked in headless Chromium (Debian's chromium + chromium-driver)."
import functools, http.server, importlib, json, re, shutil, subprocess, sys, tempfile, threading, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which('chromium'), shutil.which('chromedriver')
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
# building the docs is a development task: it needs nbdev 2, which the pass against the newest fastcore does not have
pytest.importorskip('nbdev.processors', reason='the docs build needs nbdev (the development environment)')
pytest.importorskip('mkdocs', reason='the docs build needs mkdocs (pip install -e ".[dev]")')
MODULES = ['distributions', 'adapters', 'masks', 'criteria', 'schedules', 'engine', 'stats', 'callback', 'data', 'cli', 'export', 'compute', 'budgets', 'structure', 'activations']

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'build_docs.py'), '--site', str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(out)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_port}', out
    srv.shutdown()

@pytest.fixture(scope='module')
def browser():
    from selenium import webdriver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
              '--disable-sync', '--no-first-run', f'--user-data-dir={tempfile.mkdtemp()}', '--window-size=1400,1000'):
        opts.add_argument(a)
    d = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    d.set_page_load_timeout(60)
    yield d
    d.quit()

def visit(browser, url):
    browser.get(url)
    return browser.find_element('tag name', 'body').text

def test_home_shows_install_and_quick_start(site, browser):
    base, out = site
    text = visit(browser, f'{base}/index.html')
    assert 'pip install -e ".[dev]" && fastsparse train' in text and 'pip install -e ".[dev]" && pytest' in text
    assert 'Quick start' in text and 'sparsify_model' in text and 'train_loss' in text
    browser.save_screenshot(str(out/'home.png'))

@pytest.mark.parametrize('mod', MODULES)
def test_module_page_shows_its_public_names(site, browser, mod):
    base, _ = site
    text = visit(browser, f'{base}/{mod}.html')
    names = importlib.import_module(f'fastsparse.{mod}').__all__
    assert names
    missing = [n for n in names if n not in text]
    assert not missing, f'{mod}.html does not show {missing}'
    for raw in ('#| ', '{target=', 'default_exp', 'nbdev.showdoc'):
        assert raw not in text, f'{mod}.html shows raw {raw!r}'

@pytest.mark.parametrize('page', ['distributions', 'stats', 'criteria', 'results'])
def test_plots_load(site, browser, page):
    base, _ = site
    visit(browser, f'{base}/{page}.html')
    n = browser.execute_script("return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 100).length")
    assert n >= 1, f'no plot rendered on {page}.html'

def test_navigation_and_links_resolve(site, browser):
    base, out = site
    visit(browser, f'{base}/callback.html')
    browser.save_screenshot(str(out/'callback.png'))
    nav = [a.get_attribute('href') for a in browser.find_elements('css selector', 'nav.md-nav a.md-nav__link[href]')]
    for mod in MODULES + ['tutorial_criteria', 'tutorial_pytorch', 'tutorial_activations', 'results', 'architecture']: assert any(h.split('#')[0].endswith(f'/{mod}.html') for h in nav), mod
    pages, checked = sorted(p.name for p in out.glob('*.html') if p.name != '404.html'), set()
    for page in pages:
        html = (out/page).read_text()
        for href in re.findall(r'href="([^"]+)"', html):
            if href.startswith(('http://', 'https://', 'mailto:', 'javascript:', 'data:')) or href in checked: continue
            checked.add(href)
            target, _, frag = href.partition('#')
            url = f'{base}/{target}' if target else f'{base}/{page}'
            with urllib.request.urlopen(url) as r: assert r.status == 200, (page, href)
            if frag and target.endswith('.html'):
                assert f'id="{frag}"' in (out/target).read_text(), f'{page} links to missing anchor {href}'
    assert len(checked) > 20

def test_search_index(site):
    _, out = site
    idx = json.loads((out/'search'/'search_index.json').read_text())
    text = ' '.join(d['text'] for d in idx['docs'])
    assert 'DynamicSparseTrainingCallback' in text and 'erdos_renyi_sparsity' in text
