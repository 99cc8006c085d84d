"""Makes this process look like a Cloud TPU VM to JAX's cluster detection, on a machine without TPU chips.

JAX decides "this is a TPU VM" from the TPU chips on the PCI bus (none here) and then asks the GCE metadata server
(GCE_METADATA_IP) which worker it is and who its peers are. Only the first answer is patched here; the metadata
answers come from a real HTTP server the test runs on 127.0.0.1 (tests/test_cluster_discovery.py).
"""
import os

import jax._src.clusters.cloud_tpu_cluster as _cloud_tpu_cluster

_cloud_tpu_cluster.running_in_cloud_tpu_vm = True
os.environ.pop("TPU_SKIP_MDS_QUERY", None)   # set by JAX's start-up when it found no chips
