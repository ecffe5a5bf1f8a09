"""FaceCloak: learn one universal mask per person from one photo and apply it to any photo."""
