"""Network query backends for SDSS catalogue SQL: SkyServer (anonymous, via astroquery) and
SciServer CasJobs (batch jobs into MyDB, token from the environment).

Import the clients from their modules: `ssl_photoz.surveys.sdss.query.skyserver.SkyServerClient` and
`ssl_photoz.surveys.sdss.query.casjobs.CasJobsClient`; errors shared by both live in
`ssl_photoz.surveys.sdss.query.http_errors`.
"""
