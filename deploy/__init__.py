"""rwkv_edge.deploy: targets beyond the Python runtime: ORT-format graphs for phones, the static web demo site, and which
backends run which graph."""
