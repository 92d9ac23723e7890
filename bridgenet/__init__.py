"""BridgeNet: multimodal (RGB + point cloud) industrial anomaly detection."""

__version__ = "0.1.0"
