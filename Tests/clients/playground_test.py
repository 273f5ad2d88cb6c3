"""The playground page at / in headless Chromium (Debian's chromium + chromium-driver, selenium from PyPI),
against the real onestep-serve on loopback: the page loads its model list, Generate (mouse and keyboard) puts
decoded images on the page with their seeds and timings, the bytes equal the native route's for the same seed and
class, errors appear in words, a model whose /v1/models entry lists "prompt" gets a prompt box, and nothing is
loaded from another origin. A screenshot is written to $PLAYGROUND_SCREENSHOT (default
.build/artifacts/playground.png; docs/playground.png is a copy of one).

Skipped, with the reason, when selenium or chromium/chromedriver is missing (scripts/test-clients says so loudly).
"""
import base64
import os
import shutil
import struct
import time
import unittest

from serve import REPO, Server

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
    SELENIUM = None
except ImportError as e:  # pragma: no cover - reported as a skip
    SELENIUM = f"selenium is not installed ({e})"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
MISSING = SELENIUM or (None if CHROMIUM and DRIVER else
                       "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
SCREENSHOT = os.environ.get("PLAYGROUND_SCREENSHOT", os.path.join(REPO, ".build", "artifacts", "playground.png"))


def png_size(data):
    """(width, height) from a PNG's IHDR; fails on anything that is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@unittest.skipIf(MISSING, MISSING or "")
class PlaygroundTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--no-access-log").__enter__()
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900", "--force-color-profile=srgb", "--hide-scrollbars"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            cls.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        except Exception:
            cls.server.__exit__(None, None, None)
            raise
        cls.wait = WebDriverWait(cls.driver, 30)
        cls.driver.get(cls.server.base + "/")
        cls.wait.until(lambda d: d.execute_script(
            "return window.onestepPlayground && window.onestepPlayground.state.models.length > 0"))

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()
        cls.server.__exit__(None, None, None)

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def el(self, id_):
        return self.driver.find_element(By.ID, id_)

    def wait_for_images(self, count, runs):
        """Waits until the history has `runs` runs and `count` result images have decoded; returns their info."""
        self.wait.until(lambda d: d.execute_script(
            "return window.onestepPlayground.state.runs.length") == runs and d.execute_script(
            "const imgs = [...document.querySelectorAll('#results img')];"
            "return imgs.length === arguments[0] && imgs.every(i => i.complete && i.naturalWidth > 0);", count))
        return self.js("""return [...document.querySelectorAll('#results figure')].map(f => {
            const i = f.querySelector('img');
            return {src: i.src, natural: i.naturalWidth, naturalH: i.naturalHeight, shown: i.clientWidth,
                    rendering: getComputedStyle(i).imageRendering, caption: f.querySelector('figcaption').innerText};
        });""")

    def test_1_page_loads_models_and_nothing_external(self):
        models = self.js("return window.onestepPlayground.state.models.map(m => m.id)")
        self.assertIn("shapes16-cd-int8", models)
        self.assertEqual(Select(self.el("model")).first_selected_option.text, "shapes16-cd-int8")
        # A class model: class picker shown, prompt box hidden.
        self.assertTrue(self.el("class-field").is_displayed())
        self.assertFalse(self.el("prompt-field").is_displayed())
        classes = [o.get_attribute("value") for o in Select(self.el("class")).options]
        self.assertIn("circle", classes)
        self.assertEqual(self.el("generate").text, "Generate")
        resources = self.js("return performance.getEntriesByType('resource').map(e => e.name)")
        for url in resources:
            self.assertTrue(url.startswith(self.server.base + "/"), f"page loaded {url} from another origin")
        status, headers, html = self.server.get("/")
        self.assertEqual(status, 200)
        self.assertNotIn(b"http://", html)
        self.assertNotIn(b"https://", html)

    def test_2_generate_with_the_mouse_shows_decoded_images(self):
        Select(self.el("class")).select_by_value("circle")
        self.el("random").click()  # untick: the seed box is enabled
        seed = self.el("seed")
        seed.clear()
        seed.send_keys("42")
        n = self.el("n")
        n.clear()
        n.send_keys("4")
        self.el("generate").click()
        figures = self.wait_for_images(4, runs=1)
        self.assertEqual(self.el("error").text, "")
        for i, f in enumerate(figures):
            self.assertEqual((f["natural"], f["naturalH"]), (16, 16))
            self.assertEqual(f["shown"], 256, "a 16-pixel image is shown 16x larger")
            self.assertEqual(f["rendering"], "pixelated")
            self.assertIn(f"seed {42 + i}", f["caption"])
            self.assertIn("circle", f["caption"])
            self.assertRegex(f["caption"], r"queue \d+\.\d+ ms · compute \d+\.\d+ ms")
        # The page shows exactly the PNG the native route gives for the same seed and class.
        first = base64.b64decode(figures[0]["src"].split(",", 1)[1])
        self.assertEqual(png_size(first), (16, 16))
        status, headers, native = self.server.get("/v1/generate?seed=42&label=circle")
        self.assertEqual(status, 200)
        self.assertEqual(first, native)

    def test_3_keyboard_only_generation_and_history(self):
        # Tab from the model picker reaches the Generate button.
        self.el("model").click()
        self.el("model").send_keys(Keys.ESCAPE)
        self.js("document.getElementById('model').focus()")
        for _ in range(20):
            if self.js("return document.activeElement.id") == "generate":
                break
            self.driver.switch_to.active_element.send_keys(Keys.TAB)
        self.assertEqual(self.js("return document.activeElement.id"), "generate", "Tab never reached Generate")
        # Type a count and press Enter: the form generates.
        n = self.el("n")
        n.send_keys(Keys.CONTROL, "a")
        n.send_keys("2", Keys.ENTER)
        figures = self.wait_for_images(2, runs=2)
        self.assertIn("seed 42", figures[0]["caption"])
        history = self.driver.find_elements(By.CSS_SELECTOR, "#history button")
        self.assertEqual(len(history), 2)
        # Enter on the older history entry shows its four images again.
        history[1].send_keys(Keys.ENTER)
        self.wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) == 4)
        history = self.driver.find_elements(By.CSS_SELECTOR, "#history button")
        history[0].send_keys(Keys.ENTER)
        self.wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) == 2)
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        self.assertTrue(self.driver.save_screenshot(SCREENSHOT))
        with open(SCREENSHOT, "rb") as f:
            w, h = png_size(f.read())
        self.assertGreater(w * h, 100_000)

    def test_4_server_errors_are_shown_in_words(self):
        steps = self.el("steps")
        steps.clear()
        steps.send_keys("99")
        self.el("generate").click()
        self.wait.until(lambda d: d.find_element(By.ID, "error").text != "")
        text = self.el("error").text
        self.assertIn("400", text)
        self.assertIn("steps must be an integer in 1...4", text)
        steps.clear()
        steps.send_keys("abc")
        self.el("generate").click()
        self.wait.until(lambda d: "Steps must be a whole number" in d.find_element(By.ID, "error").text)
        steps.clear()
        steps.send_keys("1")

    def test_5_a_model_that_takes_prompts_gets_a_prompt_box(self):
        real = self.js("return window.onestepPlayground.state.models")
        text_model = {"id": "tiny-text-model", "fields": ["prompt", "negative_prompt", "guidance_scale", "seed",
                                                          "steps", "n", "size"],
                      "image_size": 64, "channels": 3, "default_steps": 1, "max_steps": 4,
                      "default_guidance_scale": 0, "classes": []}
        self.js("window.onestepPlayground.useModels(arguments[0], 'tiny-text-model')", [text_model] + real)
        self.assertTrue(self.el("prompt-field").is_displayed())
        self.assertTrue(self.el("negative-field").is_displayed())
        self.assertTrue(self.el("guidance-field").is_displayed())
        self.assertFalse(self.el("class-field").is_displayed())
        prompt = self.el("prompt")
        prompt.send_keys("a red circle")
        prompt.send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter in the prompt box generates
        # This server has no such model: the page says so in the server's words.
        self.wait.until(lambda d: "tiny-text-model" in d.find_element(By.ID, "error").text)
        self.assertRegex(self.el("error").text, "40[04]")  # 404 alone; 400 when the model and a field are both unknown
        self.assertIn("is not loaded", self.el("error").text)
        self.js("window.onestepPlayground.useModels(arguments[0])", real)
        self.assertFalse(self.el("prompt-field").is_displayed())

    def test_6_no_console_errors_but_the_expected_ones(self):
        entries = [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        # The 400 and 404 of the error tests are logged by Chromium as failed fetches; nothing else may be.
        unexpected = [e["message"] for e in entries
                      if "v1/images/generations" not in e["message"] or not any(c in e["message"] for c in ("400", "404"))]
        self.assertEqual(unexpected, [])


if __name__ == "__main__":
    unittest.main()
