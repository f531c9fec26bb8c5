"""The data wing: sources on disk (`sources`, `folders`, `index`), decoding (`images`,
`stream`, `cache`), the splits the trainer sees (`dataset`), tf.data batches (`pipeline`)
and the checks of `cnnctl datasets check` (`checks`)."""
