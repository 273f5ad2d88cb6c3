"""The A1111 routes driven by the `webuiapi` client from PyPI (the library A1111 scripts use), against the real
onestep-serve on loopback: it connects (GET /sdapi/v1/scripts), lists models, samplers and schedulers, reads and
sets options, and txt2img returns decoded images with their seeds in info, byte-identical to the native route.
Skipped, with the reason, when webuiapi is not installed.
"""
import base64
import io
import json
import unittest
import urllib.error
import urllib.request

from serve import Server

try:
    import webuiapi
    MISSING = None
except ImportError as e:  # pragma: no cover - reported as a skip
    MISSING = f"webuiapi is not installed ({e})"


@unittest.skipIf(MISSING, MISSING or "")
class WebUIApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--no-access-log").__enter__()
        port = int(cls.server.base.rsplit(":", 1)[1])
        # The client's own defaults: sampler "Euler a", 20 steps, cfg 7, 512x512, as a user would leave them.
        cls.api = webuiapi.WebUIApi(host="127.0.0.1", port=port)

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)

    def test_connect_calls(self):
        # models/ ships the default consistency student and the DDPM teacher it can be distilled from.
        self.assertEqual(self.api.util_get_model_names(), ["shapes16-cd-int8", "shapes16-ddpm"])
        self.assertEqual(self.api.util_get_sampler_names(), ["Consistency", "DDPM"])
        self.assertEqual(self.api.util_get_scheduler_names(), ["automatic"])
        self.assertEqual(self.api.get_options()["sd_model_checkpoint"], "shapes16-cd-int8")
        self.assertIsNone(self.api.set_options({"sd_model_checkpoint": "shapes16-cd-int8", "CLIP_stop_at_last_layers": 2}))
        self.assertEqual(self.api.get_progress()["state"]["interrupted"], False)
        self.assertEqual(self.api.get_scripts(), {"txt2img": [], "img2img": []})

    def test_txt2img_gets_images_with_seeds(self):
        r = self.api.txt2img(prompt="circle", seed=1234, batch_size=2, n_iter=2)
        self.assertEqual(len(r.images), 4)
        for img in r.images:
            img.load()  # decodes the PNG
            self.assertEqual(img.size, (16, 16))
            self.assertEqual(img.mode, "RGB")
        self.assertEqual(r.info["all_seeds"], [1234, 1235, 1236, 1237])
        self.assertEqual(r.info["seed"], 1234)
        self.assertEqual(r.info["all_labels"], ["circle"] * 4)
        self.assertEqual(r.parameters["prompt"], "circle")
        self.assertEqual(r.parameters["seed"], 1234)
        # The client's SD defaults are adjusted, and said so.
        self.assertEqual(r.info["steps"], 4)
        self.assertTrue(any("steps 20 lowered to 4" in n for n in r.info["notes"]), r.info["notes"])
        self.assertTrue(any("16x16 only" in n for n in r.info["notes"]), r.info["notes"])
        # Same bytes as the native route for the same model, seed, class and steps.
        raw = base64.b64decode(r.json["images"][2])
        with urllib.request.urlopen(self.server.base + "/v1/generate?seed=1236&label=circle&steps=4") as native:
            self.assertEqual(raw, native.read())

    def test_random_seed(self):
        r = self.api.txt2img(prompt="", seed=-1, steps=1)
        self.assertEqual(len(r.images), 1)
        seed = r.info["seed"]
        self.assertIsInstance(seed, int)
        self.assertGreaterEqual(seed, 0)
        again = self.api.txt2img(prompt="", seed=seed, steps=1)
        self.assertEqual(r.json["images"][0], again.json["images"][0], "the seed in info reproduces the image")

    def test_errors_reach_the_client_in_words(self):
        with self.assertRaises(RuntimeError) as e:
            self.api.txt2img(prompt="a photo of a cat", seed=1, steps=1)
        status, text = e.exception.args
        self.assertEqual(status, 400)
        self.assertIn("it must contain one of: circle", json.loads(text)["detail"])
        with self.assertRaises(RuntimeError) as e:
            self.api.txt2img(prompt="circle", enable_hr=True, steps=1)
        self.assertIn("enable_hr", e.exception.args[1])
        request = urllib.request.Request(self.server.base + "/sdapi/v1/options", method="POST",
                                         data=b'{"sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"}')
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request)
        self.assertEqual(e.exception.code, 404)
        self.assertIn("available: shapes16-cd-int8", json.loads(e.exception.read())["detail"])


if __name__ == "__main__":
    unittest.main()
