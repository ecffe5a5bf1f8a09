"""Host-side orchestration: folders in; protected photos, masks, manifests out. Reads no flags."""
