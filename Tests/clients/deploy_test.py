"""The Kubernetes manifests in deploy/, validated offline: every document against the API schemas of pinned
Kubernetes versions (kubernetes-validate from PyPI, strict: unknown fields are errors), then the rules the schemas
cannot express: probes on /healthz and /readyz, a grace period that covers the preStop sleep and the drain, CPU
requests matching the worker count, the Service and HPA pointing at the Deployment, and the HPA's metric being
one the server exports. Skipped, with the reason, when kubernetes-validate or PyYAML is missing.
"""
import glob
import os
import re
import unittest

from serve import REPO, read

try:
    import kubernetes_validate
    import yaml
    MISSING = None
except ImportError as e:  # pragma: no cover - reported as a skip
    MISSING = f"kubernetes-validate / PyYAML not installed ({e})"

# The oldest Kubernetes still common in managed offerings and the newest the pinned kubernetes-validate knows.
VERSIONS = ["1.30.0", "1.37.0"]
DEPLOY = os.path.join(REPO, "deploy")


def documents():
    out = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "*.yaml"))):
        out += [(os.path.basename(path), d) for d in yaml.safe_load_all(read("deploy", os.path.basename(path))) if d]
    return out


@unittest.skipIf(MISSING, MISSING or "")
class DeployManifestsTest(unittest.TestCase):
    def setUp(self):
        self.docs = documents()
        self.by_kind = {d["kind"]: d for _, d in self.docs}

    def test_schemas_of_pinned_versions(self):
        self.assertGreaterEqual(len(self.docs), 5)
        for version in VERSIONS:
            for name, doc in self.docs:
                with self.subTest(file=name, kind=doc["kind"], version=version):
                    kubernetes_validate.validate(doc, version, strict=True)

    def test_the_validator_rejects_a_misspelt_field(self):
        """A check that can fail: the same Deployment with one field misspelt is refused."""
        text = read("deploy", "deployment.yaml").replace("readinessProbe:", "readinesProbe:")
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(yaml.safe_load(text), VERSIONS[0], strict=True)

    def container(self):
        spec = self.by_kind["Deployment"]["spec"]["template"]["spec"]
        self.assertEqual(len(spec["containers"]), 1)
        return spec, spec["containers"][0]

    def test_probes_and_drain_timing(self):
        spec, c = self.container()
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(pre_stop[0], "sleep")
        sleep_s = int(pre_stop[1])
        args = c.get("args", [])
        drain_ms = int(args[args.index("--drain-timeout-ms") + 1]) if "--drain-timeout-ms" in args else 30000
        grace = spec["terminationGracePeriodSeconds"]
        self.assertGreaterEqual(grace, sleep_s + drain_ms / 1000 + 5,
                                "terminationGracePeriodSeconds must cover preStop + drain + a margin")
        # The readiness probe notices a draining pod (503) within a probe period.
        self.assertLessEqual(c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"], sleep_s)

    def test_resources_match_the_workers(self):
        _, c = self.container()
        env = {e["name"]: e["value"] for e in c["env"]}
        requests = c["resources"]["requests"]
        self.assertIn("memory", requests)
        self.assertEqual(float(requests["cpu"]), float(env["ONESTEP_WORKERS"]), "one compute worker per requested core")
        port = int(env.get("ONESTEP_PORT", "8080"))
        self.assertIn(port, [p["containerPort"] for p in c["ports"]])
        annotations = self.by_kind["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(int(annotations["prometheus.io/port"]), port)

    def test_service_and_hpa_point_at_the_deployment(self):
        dep = self.by_kind["Deployment"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = self.by_kind["Service"]["spec"]["selector"]
        self.assertTrue(selector.items() <= labels.items(), "the Service selects the pods")
        hpa = self.by_kind["HorizontalPodAutoscaler"]["spec"]
        self.assertEqual(hpa["scaleTargetRef"]["name"], dep["metadata"]["name"])
        self.assertEqual(hpa["scaleTargetRef"]["kind"], "Deployment")
        self.assertGreaterEqual(hpa["minReplicas"], 2)

    def test_hpa_metric_is_exported_by_the_server(self):
        metric = self.by_kind["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
        self.assertEqual(metric, "onestep_queue_depth_images")
        source = read("Sources", "OnestepServer", "OnestepServer.swift")
        self.assertRegex(source, r'metrics\.gauge\("%s"' % re.escape(metric))
        rules = yaml.safe_load(self.by_kind["ConfigMap"]["data"]["config.yaml"])["rules"]
        self.assertTrue(any(r["name"]["as"] == metric for r in rules), "prometheus-adapter serves the metric")


if __name__ == "__main__":
    unittest.main()
