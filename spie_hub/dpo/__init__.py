"""The DPO's tools: activity report (HTML), register of processing activities (art. 30), subject access."""
