"""Hub sources of the paper-scale study: prefetching them (download) and models assembled from them
(llava_stage1)."""
