"""Getting students to where people use them: file formats, export, pipeline previews, the Hub."""
