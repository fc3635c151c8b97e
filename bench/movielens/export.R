# export.R: writes MovieLens latest-small, as Debian's r-cran-dslabs ships it,
# to DIR/movielens.csv (one row per rating: userId, movieId, title, year,
# genres, rating, timestamp; UTF-8, RFC 4180 quoting, "" for a missing value).
#
#   Rscript bench/movielens/export.R DIR
#
# The data are GroupLens's (https://grouplens.org/datasets/movielens/): they
# are exported on the user's machine, never committed. The file is written
# to a temporary name and renamed, so DIR never holds a half-written export.
# tests/python/test_movielens.py pins the file's SHA-256: a changed Debian
# package is noticed there, not in a table of results.
args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) {
    cat("usage: Rscript export.R DIR\n", file = stderr())
    quit(status = 2)
}
dir <- args[1]
if (!dir.exists(dir) && !dir.create(dir, recursive = TRUE)) {
    cat(sprintf("export.R: %s: cannot create the directory\n", dir), file = stderr())
    quit(status = 1)
}
suppressPackageStartupMessages(library(dslabs))
data("movielens", package = "dslabs", envir = environment())
m <- movielens
out <- data.frame(userId = m$userId, movieId = m$movieId, title = m$title,
                  year = m$year, genres = as.character(m$genres),
                  rating = sprintf("%.1f", m$rating), timestamp = m$timestamp,
                  stringsAsFactors = FALSE)
path <- file.path(dir, "movielens.csv")
temp <- paste0(path, ".tmp")
con <- file(temp, open = "w", encoding = "UTF-8")
write.csv(out, con, row.names = FALSE, na = "", fileEncoding = "UTF-8")
close(con)
if (!file.rename(temp, path)) {
    cat(sprintf("export.R: %s: cannot rename %s onto it\n", path, temp), file = stderr())
    quit(status = 1)
}
cat(sprintf("export.R: %d ratings, %d users, %d movies -> %s\n", nrow(out),
            length(unique(out$userId)), length(unique(out$movieId)), path))
