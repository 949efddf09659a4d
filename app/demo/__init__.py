"""A bundled demo site that behaves like WhatsApp Web where it matters for sessionkeeper."""

from app.demo.server import DEMO_SECRET, DemoSite

__all__ = ["DEMO_SECRET", "DemoSite"]
